"""Per-step counts of a custom_profile build (the PROFILE request), labelled from report.json.

A profiled inference build counts each schedule step of the last INFER; a profiled training
build counts each forward step, the loss, and each backward step of the last TRAIN (an INFER
leaves the loss and backward counts at 0). report.json, written next to the firmware by the
build, says what each count belongs to: `operators` for the forward steps (with a training
build's own forward kernels in `training.forward_kernels`), `training.backward_steps` after
the loss. Used by `mcutrain profile` and scripts/benchmark.py.
"""

from __future__ import annotations

from typing import Any


def step_labels(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per counted step, in PROFILE's order: pass (forward, loss, backward), step,
    opcode, kernel variant and MACs."""
    operators = report["operators"]
    training = report.get("training")
    kernels = (training["forward_kernels"] if training
               else [op.get("kernel", "ref") for op in operators])
    rows = [{"pass": "forward", "step": op["step"], "opcode": op["opcode"], "kernel": k,
             "macs": op["macs"]} for op, k in zip(operators, kernels, strict=True)]
    if training:
        rows.append({"pass": "loss", "step": None, "opcode": "LOSS", "kernel": "ref",
                     "macs": 0})
        rows += [{"pass": "backward", "step": b["step"], "opcode": b["opcode"],
                  "kernel": b["kernel"], "macs": b["macs"]} for b in training["backward_steps"]]
    return rows


def labelled(report: dict[str, Any], counts: list[int]) -> list[dict[str, Any]]:
    """step_labels(report) with each row's count as "instructions"; ValueError when the counts
    are not those of the build report.json describes."""
    rows = step_labels(report)
    if len(counts) != len(rows):
        raise ValueError(f"PROFILE gave {len(counts)} steps, report.json lists {len(rows)}: "
                         "is it the report of the firmware the board runs?")
    return [{**r, "instructions": n} for r, n in zip(rows, counts, strict=True)]


def per_mac(count: float, macs: int) -> float | None:
    return round(count / macs, 3) if macs else None


def per_kernel(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Step rows summed per (pass, opcode, kernel), busiest first."""
    sums: dict[tuple[str, str, str], dict[str, int]] = {}
    for r in rows:
        s = sums.setdefault((r["pass"], r["opcode"], r["kernel"]),
                            {"steps": 0, "macs": 0, "instructions": 0})
        s["steps"] += 1
        s["macs"] += r["macs"]
        s["instructions"] += r["instructions"]
    out = [{"pass": ps, "opcode": op, "kernel": k, **s,
            "instructions_per_mac": per_mac(s["instructions"], s["macs"])}
           for (ps, op, k), s in sums.items()]
    return sorted(out, key=lambda r: -r["instructions"])


def format_table(rows: list[dict[str, Any]], unit: str) -> str:
    """The rows as a text table with each step's share of the total, then the per-kernel sums."""
    total = sum(r["instructions"] for r in rows) or 1
    lines = [f"{'pass':<9}{'step':>5}  {'operator':<20}{'kernel':<7}{'MACs':>11}"
             f"{unit:>14}{'per MAC':>9}{'share':>7}"]
    for r in rows:
        ratio = per_mac(r["instructions"], r["macs"])
        lines.append(f"{r['pass']:<9}{'' if r['step'] is None else r['step']:>5}  "
                     f"{r['opcode']:<20}{r['kernel']:<7}{r['macs']:>11}{r['instructions']:>14}"
                     f"{'' if ratio is None else f'{ratio:.2f}':>9}"
                     f"{100 * r['instructions'] / total:>6.1f}%")
    lines += ["", "per kernel:"]
    for k in per_kernel(rows):
        ratio = k["instructions_per_mac"]
        lines.append(f"  {k['pass']:<9}{k['opcode']:<20}{k['kernel']:<7}{k['steps']:>3} steps"
                     f"{k['instructions']:>14} {unit}"
                     f"{'' if ratio is None else f'  {ratio:.2f} per MAC'}")
    return "\n".join(lines)
