"""The bundle: the deployable unit and the contract between training and production.

- `files`: the folder (or `.tar.gz`) and its manifest: `write`, `Bundle.load`, `verify`, `pack`,
  `unpack`, `place`; the file names (`MODEL`, `META`, `WEIGHTS`, `REFERENCE`, `EXPLAIN`, `MANIFEST`).
- `meta`: `bundle.json`, typed and schema-versioned (`BundleMeta`, the only reader and writer of
  it), built from the typed JSON records of `record`.
- `reference`: the reference profile monitoring compares live traffic with (`reference.npz`),
  and the `Projection` of live inputs on its PCA basis that the prediction log keeps.

No torch, no ONNX Runtime here: the server and the registry load bundles."""

from __future__ import annotations

from shipyard.bundle.files import (
    EXPLAIN,
    KNOWN_FILES,
    MANIFEST,
    META,
    MODEL,
    REFERENCE,
    WEIGHTS,
    Bundle,
    pack,
    place,
    sha256_file,
    unpack,
    verify,
    write,
    write_manifest,
)
from shipyard.bundle.meta import (
    SCHEMA_VERSION,
    BundleError,
    BundleMeta,
    Lineage,
    Metrics,
    ReferenceSummary,
    Signature,
    SignatureInput,
    SignatureOutput,
    Variant,
    signature_inputs,
)

__all__ = ["EXPLAIN", "KNOWN_FILES", "MANIFEST", "META", "MODEL", "REFERENCE", "SCHEMA_VERSION", "WEIGHTS", "Bundle",
           "BundleError", "BundleMeta", "Lineage", "Metrics", "ReferenceSummary", "Signature", "SignatureInput",
           "SignatureOutput", "Variant", "pack", "place", "sha256_file", "signature_inputs", "unpack", "verify",
           "write", "write_manifest"]
