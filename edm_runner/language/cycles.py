"""Cycle finding for the "a pipeline must not consume its own output" checks."""
from __future__ import annotations


def find_cycles(count: int, edges: dict[int, list[int]]) -> list[list[int]]:
    """One cycle per strongly connected component that has one, over nodes ``0..count-1``.

    Each cycle is a node list starting and ending at the component's smallest node, e.g.
    ``[0, 2, 0]`` or ``[3, 3]`` (a self-loop); it is a shortest such cycle. Cycles are returned
    in order of their first node, so reports are deterministic.
    """
    cycles = []
    for component in _components(count, edges):
        start = min(component)
        members = set(component)
        path = _shortest_return(start, members, edges)
        if path:
            cycles.append(path)
    return sorted(cycles)


def _shortest_return(start: int, members: set[int], edges: dict[int, list[int]]) -> list[int] | None:
    """Breadth-first search inside one component for the shortest path start -> ... -> start."""
    parent: dict[int, int] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in edges.get(node, []):
                if nxt == start:
                    back = [node]
                    while back[-1] != start:
                        back.append(parent[back[-1]])
                    return back[::-1] + [start]
                if nxt in members and nxt not in parent:
                    parent[nxt] = node
                    following.append(nxt)
        frontier = following
    return None


def _components(count: int, edges: dict[int, list[int]]) -> list[list[int]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    result: list[list[int]] = []
    counter = 0
    for root in range(count):
        if root in index:
            continue
        work = [(root, iter(edges.get(root, [])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, []))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(component)
    return result
