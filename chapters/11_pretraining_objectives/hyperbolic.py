"""Extra · Poincaré embeddings (Nickel & Kiela 2017) of the wood's hierarchy:
Hundred Acre Wood → homes → characters → favourite things.

A tree's number of nodes grows exponentially with depth; so does the area of a hyperbolic
disk with radius, while a Euclidean disk's grows only quadratically. So trees fit in a few
hyperbolic dimensions with little distortion. We embed the same tree in the Poincaré ball and
in Euclidean space of the same dimension (2-D and 5-D) with the same loss, and measure how
well each reconstructs it: mean average precision of ranking every node's relatives first,
and the distortion of tree distances.

Riemannian SGD, by hand: the ball's metric is the Euclidean one scaled by (2 / (1 - |x|²))²,
so the Riemannian gradient is the Euclidean one times ((1 - |x|²)² / 4); step, then pull
any point that left the ball back inside it.
"""
from __future__ import annotations

import itertools
from collections import deque

import torch

EPS = 1e-5  # stay this far inside the unit ball


def poincare_distance(u: torch.Tensor, v: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """d(u, v) = arcosh(1 + 2 |u - v|² / ((1 - |u|²)(1 - |v|²))). Training passes a tiny `eps`:
    arcosh has an infinite slope at 1 (u = v), which would turn a zero gradient into NaN."""
    sq = ((u - v) ** 2).sum(-1)
    denom = (1 - (u ** 2).sum(-1)) * (1 - (v ** 2).sum(-1))
    return torch.acosh((1 + 2 * sq / denom).clamp(min=1.0 + eps))


def euclidean_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return ((u - v) ** 2).sum(-1).clamp(min=1e-18).sqrt()


def project_to_ball(x: torch.Tensor) -> torch.Tensor:
    norm = x.norm(dim=-1, keepdim=True)
    return torch.where(norm >= 1 - EPS, x / norm * (1 - EPS), x)


# ----------------------------------------------------------------------------- the tree
def tree(edges: list[tuple[str, str]]):
    """Node names, the (parent, child) index pairs, and all-pairs tree distances (path lengths)."""
    nodes = list(dict.fromkeys(n for e in edges for n in e))
    index = {n: i for i, n in enumerate(nodes)}
    children = {n: [] for n in nodes}
    neighbours = {n: [] for n in nodes}
    for parent, child in edges:
        children[parent].append(child)
        neighbours[parent].append(child)
        neighbours[child].append(parent)

    pairs = [(index[p], index[c]) for p, c in edges]
    dist = torch.zeros(len(nodes), len(nodes))
    for src in nodes:  # breadth-first search from every node
        seen, queue = {src: 0}, deque([src])
        while queue:
            n = queue.popleft()
            for m in neighbours[n]:
                if m not in seen:
                    seen[m] = seen[n] + 1
                    queue.append(m)
        for m, d in seen.items():
            dist[index[src], index[m]] = d
    depth = {n: int(dist[0, index[n]]) for n in nodes}
    return nodes, pairs, dist, depth


def related_matrix(n: int, pairs) -> torch.Tensor:
    """Symmetric adjacency: u and v are related when one is the other's parent."""
    rel = torch.zeros(n, n, dtype=torch.bool)
    for a, d in pairs:
        rel[a, d] = rel[d, a] = True
    return rel


# ----------------------------------------------------------------------------- training
def train_embedding(n: int, pairs, dim: int, geometry: str, epochs: int, lr: float, seed: int) -> torch.Tensor:
    """Nickel & Kiela's loss: for each related pair (u, v) — here the tree's edges, both ways —
    a softmax over -distance of v against every node not related to u (so a grandparent is
    pushed further away than a parent). For a tree this small the edges work better than the
    paper's transitive closure, which would glue each home, character and favourite thing
    into one point. Full batch (the tree is tiny); a burn-in at lr/10 first lets
    points find their angular places before moving outward."""
    g = torch.Generator().manual_seed(seed)
    x = ((torch.rand(n, dim, generator=g, dtype=torch.float64) - 0.5) * 2e-3).requires_grad_(True)
    rel = related_matrix(n, pairs)
    us = torch.tensor([a for a, d in pairs] + [d for a, d in pairs])
    vs = torch.tensor([d for a, d in pairs] + [a for a, d in pairs])
    negatives = ~rel & ~torch.eye(n, dtype=torch.bool)           # who is NOT related to u
    distance = (lambda a, b: poincare_distance(a, b, eps=1e-12)) if geometry == "poincare" else euclidean_distance
    for epoch in range(epochs):
        d_all = distance(x[:, None, :], x[None, :, :])          # (n, n)
        scores = (-d_all[us]).masked_fill(~negatives[us], float("-inf"))
        scores[torch.arange(len(us)), vs] = -d_all[us, vs]      # the positive joins its negatives
        loss = -(scores.log_softmax(-1)[torch.arange(len(us)), vs]).mean()
        loss.backward()
        step = lr / 10 if epoch < epochs // 10 else lr
        with torch.no_grad():
            if geometry == "poincare":  # Riemannian SGD: rescale the gradient by the inverse metric
                riem = (1 - (x ** 2).sum(-1, keepdim=True)) ** 2 / 4 * x.grad
                x.copy_(project_to_ball(x - step * riem))
            else:
                x -= step * x.grad
            x.grad = None
    return x.detach()


# ----------------------------------------------------------------------------- how well is the tree kept?
def mean_average_precision(d: torch.Tensor, rel: torch.Tensor) -> float:
    """For each node, rank all others by distance; AP of finding its tree neighbours first."""
    aps = []
    for u in range(len(d)):
        if not rel[u].any():
            continue
        others = [v for v in range(len(d)) if v != u]
        order = sorted(others, key=lambda v: float(d[u, v]))
        hits, precisions = 0, []
        for rank, v in enumerate(order, 1):
            if rel[u, v]:
                hits += 1
                precisions.append(hits / rank)
        aps.append(sum(precisions) / len(precisions))
    return sum(aps) / len(aps)


def distortion(d: torch.Tensor, tree_d: torch.Tensor) -> float:
    """Mean relative error |c·d_emb - d_tree| / d_tree over all pairs, with the best single
    scale c (found by a 1-D search: distances in any geometry are only defined up to scale here)."""
    iu = torch.triu_indices(len(d), len(d), 1)
    de, dt = d[iu[0], iu[1]].double(), tree_d[iu[0], iu[1]].double()
    ratios = (dt / de.clamp(min=1e-12)).sort().values
    cands = torch.quantile(ratios, torch.linspace(0, 1, 201, dtype=torch.float64))
    errs = [float(((c * de - dt).abs() / dt).mean()) for c in cands]
    return min(errs)


def run_poincare(wood, epochs: int, seed: int) -> dict:
    """The same tree in the Poincaré ball and in Euclidean space, 2-D and 5-D: MAP and distortion."""
    nodes, pairs, tree_d, depth = tree(wood.hierarchy())
    rel = related_matrix(len(nodes), pairs)
    rows, points = [], {}
    for dim, geometry in itertools.product((2, 5), ("poincare", "euclidean")):
        lr = 0.3 if geometry == "poincare" else 0.05
        x = train_embedding(len(nodes), pairs, dim, geometry, epochs, lr, seed)
        dist = (poincare_distance if geometry == "poincare" else euclidean_distance)(x[:, None], x[None])
        rows.append({"geometry": geometry, "dim": dim, "mean average precision": mean_average_precision(dist, rel),
                     "distortion": distortion(dist, tree_d)})
        if dim == 2:
            points[geometry] = x.tolist()
        print(f"Poincaré extra: {geometry} {dim}-D: MAP {rows[-1]['mean average precision']:.3f}, "
              f"distortion {rows[-1]['distortion']:.3f}")
    return {"table": rows, "nodes": nodes, "depth": depth, "edges": wood.hierarchy(), "points_2d": points,
            "epochs": epochs}
