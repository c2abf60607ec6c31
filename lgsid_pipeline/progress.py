"""Progress bars for the long steps (encoding, G-DPO, TIGER training, evaluation), on a terminal only.

``lgsid materialize`` turns them on when its stderr is a terminal (``LGSID_PROGRESS=bar``);
everywhere else (CI, the Dagster daemon, a log file) this module does nothing and the steps'
plain log lines are the record. Bars are tqdm's (rate and ETA), one per named step, closed when
the step reaches its total.

    from lgsid_pipeline.progress import advance
    advance("G-DPO steps", done=step, total=total_steps, align=0.41)
"""

from __future__ import annotations

import os
import sys

ENV = "LGSID_PROGRESS"
_BARS: dict[str, object] = {}


def enabled() -> bool:
    return os.environ.get(ENV) == "bar"


def advance(what: str, done: int, total: int | None, unit: str = "it", **postfix) -> None:
    """Show ``what`` at ``done`` of ``total`` (no-op unless bars are on)."""
    if not enabled():
        return
    from tqdm import tqdm

    bar = _BARS.get(what)
    if bar is None or (total is not None and bar.total != total) or done < bar.n:
        if bar is not None:
            bar.close()
        bar = _BARS[what] = tqdm(total=total, desc=what, unit=unit, file=sys.stderr, leave=False,
                                 dynamic_ncols=True, mininterval=0.5)
    bar.update(done - bar.n)
    if postfix:
        bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=False)
    if total is not None and done >= total:
        bar.close()
        _BARS.pop(what, None)


def close_all() -> None:
    for bar in _BARS.values():
        bar.close()
    _BARS.clear()
