def main() -> None:
    print("rlhfspec")
