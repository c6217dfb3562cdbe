"""Regenerate the numbers the docs quote about the committed fixture run, so they cannot drift from the code.

Each generated passage sits between two markers in a docs page::

    <!-- regenerate:NAME -->
    ... written by this script ...
    <!-- /regenerate:NAME -->

Usage (from the repository root)::

    python docs/regenerate.py           # analyse fixtures/quick-run (about a minute) and rewrite the blocks
    python docs/regenerate.py --check   # exit 1, naming the stale blocks, if a page is out of step

``tests/test_docs_in_step.py`` runs the check in the test suite on the session's analysis of the fixture.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "fixtures" / "quick-run"


def _g(x: float) -> str:
    """A number as the docs write it: two significant digits, plain below 1000."""
    x = float(x)
    if x != 0 and (abs(x) < 1e-2 or abs(x) >= 1e4):
        return f"{x:.1e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{x:.2g}" if abs(x) < 10 else f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def fixture_phases(tree: xr.DataTree) -> str:
    """The phases of grokking on the fixture (``docs/analyses.md``, "The three phases")."""
    ph = tree["phases"].to_dataset()
    ab = tree["ablation"].to_dataset()
    ms = tree["measures"].to_dataset()
    at = {str(p): int(e) for p, e in zip(ph["point"].values, ph["epoch_at"].values)}
    m_end, c_end, k_end = at["memorisation_end"], at["circuit_formation_end"], at["cleanup_end"]
    all_found = bool(ph["found"].all()) and bool(ph["certain"].all())
    checks_pass = bool(ph["signature"].all())
    epochs = ab["checkpoint"].values
    acc = ab["acc_train"].values
    perfect = np.flatnonzero(acc >= 1.0)
    first_perfect = int(epochs[perfect[0]]) if perfect.size else None
    restricted = str(ph.attrs.get("restricted", "restricted_loss_all"))
    exc = ab["excluded_loss_full"].sel(checkpoint=slice(None, m_end))
    exc_min_at = int(exc["checkpoint"].values[int(np.argmin(exc.values))])

    def v(ds: xr.Dataset, name: str, epoch: int) -> float:
        return float(ds[name].sel(checkpoint=epoch))

    gini = (ms["gini_W_E_component"] + ms["gini_W_logit_component"]) / 2
    drops = {str(k): int(e) for k, e in zip(ph["loss"].values, ph["tenfold_drop_epoch"].values)}
    lines = [
        f"**On the quick-preset fixture** (p = {tree.attrs['p']}, K = {{{', '.join(str(k) for k in tree.attrs['key_freqs'])}}}, "
        f"{ab.sizes['checkpoint']} checkpoints; `mechgrok.analyze(mechgrok.open_run(\"fixtures/quick-run\"))`, whose "
        "phases are `find_phases` of its progress measures):",
        f"- Boundaries: memorisation ends at {m_end}, circuit formation ends at {c_end}, cleanup ends at {k_end}. "
        + ("All are found and certain" if all_found else "Not all are found and certain")
        + ("; every signature check passes." if checks_pass else "; some signature checks fail."),
        f"- Memorisation: train accuracy is 1.0 from epoch {first_perfect}. The excluded loss reaches its minimum of "
        f"{_g(exc.min())} nats at epoch {exc_min_at}.",
        f"- Circuit formation: the excluded loss rises {_g(v(ab, 'excluded_loss_full', m_end))} → "
        f"{_g(v(ab, 'excluded_loss_full', c_end))} nats and the restricted loss (`{restricted}`) falls "
        f"{_g(v(ab, restricted, m_end))} → {_g(v(ab, restricted, c_end))}. The test loss goes "
        f"{_g(v(ab, 'loss_test', m_end))} → {_g(v(ab, 'loss_test', c_end))}; the test accuracy is "
        f"{_g(v(ab, 'acc_test', c_end))} at epoch {c_end}.",
        f"- Cleanup: the Gini (mean of the two component variants) rises {_g(gini.sel(checkpoint=c_end))} → "
        f"{_g(gini.sel(checkpoint=k_end))} and the sum of squared weights falls "
        f"{_g(v(ms, 'sum_sq_weights_total', c_end))} → {_g(v(ms, 'sum_sq_weights_total', k_end))}. The test loss goes "
        f"{_g(v(ab, 'loss_test', c_end))} → {_g(v(ab, 'loss_test', k_end))}.",
        f"- The restricted loss falls ten-fold by epoch {drops.get('restricted_loss')}; the test loss does so only at "
        f"epoch {drops.get('loss_test')}.",
    ]
    return "\n".join(_wrap(line) for line in lines)


def _wrap(line: str, width: int = 116) -> str:
    """Wrap one paragraph or bullet at ``width`` (continuation lines of a bullet indented by two)."""
    words, out, cur = line.split(" "), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            out.append(cur)
            cur = ("  " if line.startswith("- ") else "") + w
        else:
            cur = f"{cur} {w}" if cur else w
    out.append(cur)
    return "\n".join(out)


#: name -> (page, generator of the block's text from the fixture's analysis tree)
BLOCKS: dict[str, tuple[Path, Callable[[xr.DataTree], str]]] = {
    "fixture-phases": (REPO / "docs" / "analyses.md", fixture_phases),
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- regenerate:{re.escape(name)} -->\n)(.*?)(<!-- /regenerate:{re.escape(name)} -->)", re.S)


def stale_blocks(tree: xr.DataTree) -> list[str]:
    """Names of the blocks whose text differs from what ``tree`` gives (or whose markers are missing)."""
    stale = []
    for name, (page, make) in BLOCKS.items():
        m = _pattern(name).search(page.read_text(encoding="utf-8"))
        if m is None or m.group(2) != make(tree) + "\n":
            stale.append(f"{page.relative_to(REPO)}: {name}")
    return stale


def rewrite(tree: xr.DataTree) -> list[str]:
    """Rewrite every block from ``tree``; returns the names of the blocks that changed.

    Raises
    ------
    ValueError
        If a page lacks a block's markers.
    """
    changed = []
    for name, (page, make) in BLOCKS.items():
        text = page.read_text(encoding="utf-8")
        pattern = _pattern(name)
        if pattern.search(text) is None:
            raise ValueError(f"{page}: no <!-- regenerate:{name} --> ... <!-- /regenerate:{name} --> markers")
        new = pattern.sub(lambda m: m.group(1) + make(tree) + "\n" + m.group(3), text)
        if new != text:
            page.write_text(new, encoding="utf-8")
            changed.append(name)
    return changed


def main(argv: list[str]) -> int:
    import mechgrok

    tree = mechgrok.analyze(mechgrok.open_run(FIXTURE), progress=True)
    if "--check" in argv:
        stale = stale_blocks(tree)
        for s in stale:
            print(f"stale: {s} (run python docs/regenerate.py)")
        return 1 if stale else 0
    changed = rewrite(tree)
    print("rewrote: " + (", ".join(changed) if changed else "nothing (in step)"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
