"""The one plotting helper: matplotlib on its file backend, and the save-and-close epilogue."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display; safe in workers and servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path, *, dpi: float | None = None, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` (parents created) and close it. ``tight=False`` keeps the
    figure's own margins (tight_layout costs more than a small plot itself)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, **({} if dpi is None else {"dpi": dpi}))
    plt.close(fig)
    return path
