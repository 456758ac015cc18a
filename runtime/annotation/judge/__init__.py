"""AI-assisted annotation: an AI judge labels pairs in both orders, people review a sample.

`items` picks the pairs, `prompt` renders the judge's prompt from the criteria and parses
its answers strictly, `backends` asks a chat-completions endpoint or a local model,
`runner` and `output` drive a resumable run and write ordinary annotation records, `sample`
draws the human review sample, `review` measures the judge against it and gates, and `use`
decides which AI labels aggregation may take (none until the gate passed).
"""
