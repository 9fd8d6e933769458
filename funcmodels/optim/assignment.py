"""optax's ``assignment``: the Hungarian algorithm for the linear assignment problem.

Given an ``n x m`` cost matrix, choose ``min(n, m)`` pairs ``(row, column)``, each row and
each column at most once, of least total cost. Both functions are optax's algorithms step
for step (the same potentials, the same tie-breaking), in eager torch: a Python loop over
the rows with vector operations inside, so they run on the tensor's device but are not
traced by ``vmap``/``torch.compile``.
"""

from __future__ import annotations

import torch

__all__ = ["base_hungarian_algorithm", "hungarian_algorithm"]


def _check(where: str, cost_matrix: torch.Tensor) -> torch.Tensor:
    if not isinstance(cost_matrix, torch.Tensor):
        raise TypeError(f"{where}: expected a tensor cost_matrix, got {type(cost_matrix)}")
    if cost_matrix.dim() != 2:
        raise ValueError(
            f"{where}: expected a 2-dim cost_matrix, got shape {tuple(cost_matrix.shape)}"
        )
    if cost_matrix.dtype.is_complex or cost_matrix.dtype == torch.bool:
        raise TypeError(f"{where}: expected real costs, got {cost_matrix.dtype}")
    if not bool(torch.isfinite(cost_matrix).all()):
        raise ValueError(f"{where}: the costs must be finite")
    return cost_matrix


def _empty(cost_matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    empty = torch.zeros(0, dtype=torch.long, device=cost_matrix.device)
    return empty, empty.clone()


def hungarian_algorithm(cost_matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A least-cost assignment of rows to columns (optax's, after the Scenic library's
    shortest-augmenting-path form).

    ``i, j = hungarian_algorithm(cost)``; the assignment's cost is ``cost[i, j].sum()``.
    Potentials are held in the cost's floating dtype (float64 for integer costs).

    Arguments:
        cost_matrix: a real ``(n, m)`` tensor of finite costs.

    Returns:
        ``(i, j)``, two int64 tensors of shape ``(min(n, m),)``: row and column indices.
            For ``n <= m`` ``i`` is ``0, ..., n-1``; otherwise ``j`` is ``0, ..., m-1``
            (optax's orders).

    Raises:
        TypeError: a cost_matrix that is not a real tensor.
        ValueError: a cost_matrix that is not 2-dim or has non-finite costs.
    """
    cost = _check("fm.optim.assignment.hungarian_algorithm", cost_matrix)
    if 0 in cost.shape:
        return _empty(cost)
    transpose = cost.shape[0] > cost.shape[1]
    if transpose:
        cost = cost.T
    if not cost.dtype.is_floating_point:
        cost = cost.to(torch.float64)
    rows, cols = cost.shape
    u = cost.new_zeros(rows + 2)  # row potentials (slot rows + 1 takes unused adds)
    v = cost.new_zeros(cols + 1)  # column potentials; -v[0] ends as the matching cost
    parent = torch.zeros(cols + 1, dtype=torch.long, device=cost.device)  # column -> row
    inf = cost.new_tensor(float("inf"))
    for row in range(rows):
        parent[0] = row + 1
        path = torch.zeros(cols, dtype=torch.long, device=cost.device)
        used = torch.zeros(cols + 1, dtype=torch.bool, device=cost.device)
        minv = cost.new_full((cols,), float("inf"))
        col = 0
        while int(parent[col]) != 0:
            used[col] = True
            unused = ~used[1:]
            r = int(parent[col])
            cur = torch.where(unused, cost[r - 1] - u[r] - v[1:], inf)
            better = cur < minv
            path = torch.where(better, col, path)
            minv = torch.where(better, cur, minv)
            masked = torch.where(unused, minv, inf)
            col = int(masked.argmin()) + 1
            delta = masked.min()
            indices = torch.where(used, parent, rows + 1)
            u = u.index_add(0, indices, delta.expand(cols + 1))
            v = torch.where(used, v - delta, v)
            minv = torch.where(unused, minv - delta, minv)
        while col != 0:
            new_col = int(path[col - 1])
            parent[col] = parent[new_col]
            col = new_col
    if rows == cols:
        assigned, indices = parent[1:], torch.arange(rows, device=cost.device)
    else:
        assigned, indices = torch.topk(parent[1:], rows)
    assigned = assigned - 1
    return (indices, assigned) if transpose else (assigned, indices)


def _augmenting_path(cost, u, v, path, row4col, current_row):
    """optax's ``_find_augmenting_path``: the shortest augmenting path from a row."""
    n, m = cost.shape
    min_value = cost.new_zeros(())
    num_remaining = m
    remaining = torch.arange(m - 1, -1, -1, device=cost.device)
    sr = torch.zeros(n, dtype=torch.bool, device=cost.device)
    sc = torch.zeros(m, dtype=torch.bool, device=cost.device)
    costs = cost.new_full((m,), float("inf"))
    sink, i = -1, current_row
    while sink == -1:
        sr[i] = True
        js = remaining[:num_remaining]
        r = min_value + cost[i, js] - u[i] - v[js]
        path[js] = torch.where(r < costs[js], i, path[js])
        costs[js] = torch.minimum(costs[js], r)
        # optax's scan keeps the last position holding the minimum that is either its
        # first occurrence or a free column
        seen = costs[js]
        lowest = seen.min()
        at_min = seen == lowest
        first = int(at_min.nonzero()[0])
        candidates = at_min & (row4col[js] == -1)
        candidates[first] = True
        index = int(candidates.nonzero()[-1])
        min_value = lowest
        j = int(remaining[index])
        if int(row4col[j]) == -1:
            sink = j
        else:
            i = int(row4col[j])
        sc[j] = True
        num_remaining -= 1
        remaining[index] = remaining[num_remaining]
    return sink, min_value, sr, sc, costs


def base_hungarian_algorithm(cost_matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A least-cost assignment of rows to columns (optax's, after Crouse's rectangular
    shortest-augmenting-path algorithm, 2016), computed in float64.

    Arguments:
        cost_matrix: a real ``(n, m)`` tensor of finite costs.

    Returns:
        ``(i, j)``, two int64 tensors of shape ``(min(n, m),)``: row and column indices.
            For ``n <= m`` ``i`` is ``0, ..., n-1``; otherwise ``i`` is sorted by column.

    Raises:
        TypeError: a cost_matrix that is not a real tensor.
        ValueError: a cost_matrix that is not 2-dim or has non-finite costs.
    """
    cost = _check("fm.optim.assignment.base_hungarian_algorithm", cost_matrix)
    if 0 in cost.shape:
        return _empty(cost)
    transpose = cost.shape[1] < cost.shape[0]
    cost = (cost.T if transpose else cost).to(torch.float64)
    n, m = cost.shape
    u, v = cost.new_zeros(n), cost.new_zeros(m)
    path = torch.full((m,), -1, dtype=torch.long, device=cost.device)
    col4row = torch.full((n,), -1, dtype=torch.long, device=cost.device)
    row4col = torch.full((m,), -1, dtype=torch.long, device=cost.device)
    rows = torch.arange(n, device=cost.device)
    for current_row in range(n):
        sink, min_value, sr, sc, costs = _augmenting_path(cost, u, v, path, row4col, current_row)
        u[current_row] += min_value
        mask = sr & (rows != current_row)
        u = torch.where(mask, u + min_value - costs[col4row], u)
        v = torch.where(sc, v + costs - min_value, v)
        while True:
            i = int(path[sink])
            row4col[sink] = i
            col4row[i], sink = sink, int(col4row[i])
            if i == current_row:
                break
    if transpose:
        order = col4row.argsort(stable=True)
        return col4row[order], order
    return torch.arange(n, device=cost.device), col4row
