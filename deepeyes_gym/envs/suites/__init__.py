"""Task suites: the bundled RealX-style suite (:mod:`.realx`), loaders for real data on disk
(:mod:`.loaders`) and a tiny in-code toy suite (:mod:`.builtin`).

``load_suite`` and ``train_stream`` are re-exported from :mod:`.realx` lazily, so importing this
package stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_suite", "train_stream"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import realx

        return getattr(realx, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
