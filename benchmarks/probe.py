"""Child process of one memory measurement: ``python -m benchmarks.probe '{"model": ...}'``.

Prints one JSON line (see ``common.probe``). A fresh process per configuration keeps the peak
RSS of one configuration from hiding in the heap another one left behind.
"""

from __future__ import annotations

import json
import sys

from benchmarks.common import _probe_dict


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(json.dumps(_probe_dict(json.loads(args[0]))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
