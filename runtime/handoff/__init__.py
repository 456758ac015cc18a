"""The handoff package: everything a new team needs to understand what was optimised and why.

A run directory is a working area (optimizer states, trainer checkpoints, caches); the handoff
package is the artefact that outlives it. It holds the criteria document with its version
history, the prompt sampling procedure, the annotator playbook with its training materials
(worked examples, gold items with rationales), the annotation QC audit, the reward-model
evaluation by dimension with its length analysis, the deployment checkpoint's evidence and
weights (copied, or referenced by path and sha256), the lineage with a manifest that says what
produced every file, a Hugging Face model card, and an index page (HTML and Markdown) that
links everything.

Three properties make the package trustworthy rather than just convenient:

* Every file is checksummed (`CHECKSUMS.sha256`, `sha256sum -c` compatible) and described in
  `lineage/manifest.json`; `verify_package` re-hashes and reports missing, extra and altered
  files. Files copied from the run are first checked against the sha256 that `lineage.json`
  recorded when their stage wrote them, so the package never vouches for bytes the run did
  not produce.
* The same run directory gives byte-identical packages: no clock (times come from the lineage
  record), sorted keys and file lists, and a tarball with sorted entries, fixed mtime, uid/gid
  0, no user names and a gzip header without time or file name. The handoff stage's own
  lineage entry (which carries the clock time of the stage) is left out of the copied
  lineage, so `rlhfspec handoff` and the `handoff` stage write the same bytes.
* HTML is rendered by the sandboxed, autoescaping environment of `compiler/render.py` and is
  self-contained (no network request; the shared layout's Content-Security-Policy forbids
  them). Prompts and responses from evaluation, which a policy may have produced from hostile
  prompts, are shown as text, never as markup.

Modules: `layout` (parts, file names, formats), `facts` (the run directory read and checked
once), `collect` (which files go in, from where), `context` (what the templates see),
`package` (build and write; the handoff stage), `verify` (re-hash a package).
"""

from rlhfspec.runtime.handoff.layout import CHECKSUMS_FILE, MANIFEST_FILE, PARTS, WEIGHTS_MODES
from rlhfspec.runtime.handoff.package import PackageResult, build_package, handoff_stage
from rlhfspec.runtime.handoff.verify import VerifyResult, verify_package

__all__ = [
    "CHECKSUMS_FILE",
    "MANIFEST_FILE",
    "PARTS",
    "WEIGHTS_MODES",
    "PackageResult",
    "VerifyResult",
    "build_package",
    "handoff_stage",
    "verify_package",
]
