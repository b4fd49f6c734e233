"""Multi-task schedules: which task batches make each optimiser step of an epoch.

A plan is a list of steps; a step maps each task in it to its batch size.

- ``sequential``: each task's training data once per epoch, task after task (one task per
  step). ``steps_per_epoch`` does not apply.
- ``round_robin``: one task per step, tasks taking turns. The share of steps each task gets
  follows ``sampling`` (``equal``: a plain cycle t1, t2, t3, t1, ...); turns are spread
  evenly through the epoch.
- ``interleaved``: every step holds one batch of every task, and the trainer hands the
  per-task losses to the gradient strategy together. ``sampling`` sets the per-task batch
  sizes: with T tasks and batch size B, task t gets ``round(T * B * p_t)`` rows per step.

Sampling weights over training-set sizes N_t: ``proportional`` p ~ N, ``sqrt`` p ~ sqrt(N),
``equal`` p = 1/T, ``annealed`` p ~ N^alpha with alpha = 1 - 0.8 (e - 1) / (E - 1) in epoch e
of E (Stickland & Murray 2019). Small tasks loop over their data, large ones are subsampled.
Default steps per epoch: as many as one pass over all the data at batch size B
(``round_robin``: sum of ceil(N_t / B); ``interleaved``: ceil(sum N_t / (T * B))).
"""

from __future__ import annotations

import math

Step = dict[str, int]


def annealing_alpha(epoch: int, epochs: int) -> float:
    """Stickland & Murray's exponent for epoch ``epoch`` (1-based) of ``epochs``."""
    if epochs <= 1:
        return 1.0
    return 1.0 - 0.8 * (epoch - 1) / (epochs - 1)


def sampling_weights(
    sizes: dict[str, int], sampling: str, epoch: int = 1, epochs: int = 1
) -> dict[str, float]:
    alpha = {"proportional": 1.0, "sqrt": 0.5, "equal": 0.0}.get(sampling)
    if sampling == "annealed":
        alpha = annealing_alpha(epoch, epochs)
    if alpha is None:
        raise ValueError(
            f"unknown sampling {sampling!r}; use proportional, sqrt, equal or annealed"
        )
    raw = {t: float(n) ** alpha for t, n in sizes.items()}
    total = sum(raw.values())
    return {t: w / total for t, w in raw.items()}


def _apportion(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder)."""
    exact = {t: total * w for t, w in weights.items()}
    counts = {t: math.floor(x) for t, x in exact.items()}
    short = total - sum(counts.values())
    for t in sorted(exact, key=lambda t: counts[t] - exact[t])[:short]:
        counts[t] += 1
    return counts


def _spread(counts: dict[str, int]) -> list[str]:
    """Order task turns so each task's turns are spread evenly (smooth weighted round robin)."""
    total = sum(counts.values())
    credit = dict.fromkeys(counts, 0)
    order = []
    for _ in range(total):
        for t in counts:
            credit[t] += counts[t]
        best = max(credit, key=lambda t: credit[t])  # ties: first task in config order
        credit[best] -= total
        order.append(best)
    return order


def plan_epoch(
    schedule: str,
    sizes: dict[str, int],
    batch_size: int,
    sampling: str = "proportional",
    epoch: int = 1,
    epochs: int = 1,
    steps_per_epoch: int = 0,
) -> list[Step]:
    """The steps of epoch ``epoch`` (1-based). ``sizes``: training rows per task, in config order."""
    if schedule == "sequential":
        steps: list[Step] = []
        for task, n in sizes.items():
            full, rest = divmod(n, batch_size)
            steps += [{task: batch_size}] * full + ([{task: rest}] if rest else [])
        return steps
    weights = sampling_weights(sizes, sampling, epoch, epochs)
    if schedule == "round_robin":
        total = steps_per_epoch or sum(math.ceil(n / batch_size) for n in sizes.values())
        return [{task: batch_size} for task in _spread(_apportion(total, weights))]
    if schedule == "interleaved":
        per_step = _apportion(len(sizes) * batch_size, weights)
        per_step = {t: max(1, b) for t, b in per_step.items()}  # every task in every step
        total = steps_per_epoch or math.ceil(sum(sizes.values()) / (len(sizes) * batch_size))
        return [dict(per_step) for _ in range(total)]
    raise ValueError(f"unknown schedule {schedule!r}; use sequential, round_robin or interleaved")


def plan_epochs(
    train, sizes: dict[str, int], auxiliary: dict[str, float] | None = None
) -> list[list[Step]]:
    """Every epoch's steps as ``train`` (the config's ``train`` table) says, cut short at
    ``max_steps``. A step takes ``batch_size * accumulate_steps`` rows of a task (split into
    micro-batches later). ``auxiliary``: objectives that join a share of the steps besides
    (``with_auxiliary``)."""
    rows = train.batch_size * train.accumulate_steps
    plans = [
        with_auxiliary(
            plan_epoch(
                train.schedule, sizes, rows, train.sampling, e, train.epochs, train.steps_per_epoch
            ),
            auxiliary or {},
            rows,
        )
        for e in range(1, train.epochs + 1)
    ]
    return cut_to(plans, train.max_steps) if train.max_steps else plans


def with_auxiliary(steps: list[Step], shares: dict[str, float], rows: int) -> list[Step]:
    """``steps`` with each auxiliary objective added, ``rows`` of it, to its share of them,
    spread evenly (share 0.25: every fourth step, starting with the fourth)."""
    out = [dict(step) for step in steps]
    for name, share in shares.items():
        for i, step in enumerate(out):
            if math.floor((i + 1) * share + 1e-9) > math.floor(i * share + 1e-9):
                step[name] = rows
    return out


def cut_to(plans: list[list[Step]], max_steps: int) -> list[list[Step]]:
    """The first ``max_steps`` steps of ``plans``; epochs left without a step are dropped."""
    cut, left = [], max_steps
    for plan in plans:
        if left <= 0:
            break
        cut.append(plan[:left])
        left -= len(cut[-1])
    return cut


def planned_examples(steps: list[Step]) -> dict[str, int]:
    """Rows each task is planned to contribute over ``steps``."""
    seen: dict[str, int] = {}
    for step in steps:
        for task, n in step.items():
            seen[task] = seen.get(task, 0) + n
    return seen
