"""The flow graph's layout: where the balancer, pool and server nodes go, and the paths
between them that the dots of requests travel.

Big pools are drawn collapsed, as one node with a bar of their servers' states (a click
expands them: `?expand=POOL`), so the graph of a balancer with hundreds of servers still
fits a screen.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from ...control.figures import STATES
from .format import fmt_pct

# A pool of more servers than this is drawn as one node (a click shows them all): twelve
# rows, about 770 px, is most of a screen.
FLOW_POOL_MAX = 12
# More servers than this in all (24 rows, about 1,600 px) do not fit a screen even at half
# size, where names are still legible: then pools of more than FLOW_KEEP servers are collapsed
# too (smaller ones stay drawn: their node would be about as tall as their servers).
FLOW_CROWDED = 24
FLOW_KEEP = 4

# Node sizes (width, height), rows and columns, in SVG pixels.
BALANCER = (150.0, 76.0)
POOL = (176.0, 60.0)
SERVER = (250.0, 52.0)
GROUP = (300.0, 136.0)  # a collapsed pool's node
TOGGLE = (176.0, 26.0)  # "collapse" under an expanded big pool
ROW = 64.0
GROUP_GAP = 28.0
MARGIN = 24.0
COLUMNS = (24.0, 300.0, 600.0)


def _curve(x1: float, y1: float, x2: float, y2: float) -> str:
    middle = (x1 + x2) / 2
    return f"C {middle:.1f},{y1:.1f} {middle:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"


def collapsible(pools: list[dict[str, Any]]) -> set[str]:
    """The pools the flow view draws as one node unless asked to expand them."""
    total = sum(len(pool["servers"]) for pool in pools)
    limit = FLOW_KEEP if total > FLOW_CROWDED else FLOW_POOL_MAX
    return {pool["name"] for pool in pools if len(pool["servers"]) > limit}


def flow_link(expanded: frozenset[str], pool: str) -> str:
    """The flow view's URL with `pool` expanded, or collapsed again if it is."""
    names = sorted(expanded ^ {pool})
    return "/flow?" + urlencode([("expand", name) for name in names]) if names else "/flow"


def share_spread(servers: list[dict[str, Any]]) -> dict[str, float] | None:
    """The busiest and the quietest healthy server's share of the pool's requests in the
    last second, and the share each would have if the pool were even; None without
    requests (the script computes the same: shareSpread)."""
    total = sum(server["rps"] for server in servers)
    healthy = [server["rps"] for server in servers if server["state"] == "healthy"]
    if not total or not healthy:
        return None
    shares = [rps / total for rps in healthy]
    return {"max": max(shares), "min": min(shares), "even": 1 / len(shares)}


def spread_text(spread: dict[str, float] | None) -> str:
    if spread is None:
        return "no requests in the last second"
    return (
        f"busiest {fmt_pct(spread['max'])} · quietest {fmt_pct(spread['min'])}"
        f" · even {fmt_pct(spread['even'])}"
    )


def state_bar(states: dict[str, int], width: float) -> list[dict[str, Any]]:
    """A stacked bar of the pool's servers by state: one segment per state, in STATES order
    (width 0 when none, so the script can resize them in place)."""
    total = sum(states.values())
    segments, x = [], 0.0
    for state in STATES:
        w = width * states[state] / total if total else 0.0
        segments.append({"state": state, "x": round(x, 1), "w": round(w, 1)})
        x += w
    return segments


def _collapsed_pool(node: dict[str, Any], y: float, link: str) -> float:
    """Lay out a collapsed pool at `y`: its node beside one group node; the block's height."""
    pool = node["pool"]
    block = GROUP[1] + 8
    node["y"] = y + block / 2 - POOL[1] / 2
    node["group"] = {
        "x": COLUMNS[2],
        "y": y + (block - GROUP[1]) / 2,
        "w": GROUP[0],
        "h": GROUP[1],
        "bar": state_bar(pool["states"], GROUP[0] - 28),  # 14 px padding each side
        "spread": spread_text(share_spread(pool["servers"])),
        "link": link,
    }
    node["servers"] = []
    return block


def _expanded_pool(node: dict[str, Any], y: float, link: str | None) -> float:
    """Lay out a pool at `y` with a row per server, and a "collapse" toggle under the pool
    node when it is a big one (`link` set); the block's height."""
    pool = node["pool"]
    block = max(len(pool["servers"]), 1) * ROW
    # A long expanded pool keeps its node level with its first servers, where the view goes
    # when it is expanded; a short one centres it as before.
    block_middle = min(block, FLOW_POOL_MAX * ROW) / 2
    node["y"] = y + block_middle - POOL[1] / 2
    servers = []
    for index, server in enumerate(pool["servers"]):
        server_y = y + index * ROW + (ROW - SERVER[1]) / 2
        servers.append(
            {"x": COLUMNS[2], "y": server_y, "w": SERVER[0], "h": SERVER[1], "server": server}
        )
    if link is not None:
        block = max(block, node["y"] + POOL[1] + 8 + TOGGLE[1] - y)
        node["toggle"] = {
            "x": COLUMNS[1],
            "y": node["y"] + POOL[1] + 8,
            "w": TOGGLE[0],
            "h": TOGGLE[1],
            "link": link,
        }
    node["servers"] = servers
    return block


def _connect(balancer: dict[str, Any], laid_pools: list[dict[str, Any]]) -> None:
    """The edges from the balancer to each pool and on to its servers (or group), and each
    target's `route`: the whole path from the balancer that its dots travel."""
    bx, by = balancer["x"] + balancer["w"], balancer["y"] + balancer["h"] / 2
    for node in laid_pools:
        px, py = node["x"], node["y"] + node["h"] / 2
        node["edge"] = f"M {bx:.1f},{by:.1f} " + _curve(bx, by, px, py)
        exit_x = px + node["w"]
        targets = node["servers"] + ([node["group"]] if node["group"] else [])
        for target in targets:
            sx, sy = target["x"], target["y"] + target["h"] / 2
            target["edge"] = f"M {exit_x:.1f},{py:.1f} " + _curve(exit_x, py, sx, sy)
            target["route"] = f"{node['edge']} L {exit_x:.1f},{py:.1f} " + _curve(
                exit_x, py, sx, sy
            )


def flow_layout(
    pools: list[dict[str, Any]], expanded: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Positions of the balancer, pool and server nodes (left to right) and the paths
    between them. A server's `route` runs from the balancer through its pool: the path
    the dots of its requests travel. A collapsed pool has one `group` node instead of its
    servers, with one route for the whole pool's dots."""
    big = collapsible(pools)
    y = MARGIN
    laid_pools: list[dict[str, Any]] = []
    for pool in pools:
        name = pool["name"]
        node: dict[str, Any] = {"x": COLUMNS[1], "w": POOL[0], "h": POOL[1], "pool": pool}
        node["toggle"] = None
        node["group"] = None
        if name in big and name not in expanded:
            block = _collapsed_pool(node, y, flow_link(expanded, name))
        else:
            block = _expanded_pool(node, y, flow_link(expanded, name) if name in big else None)
        laid_pools.append(node)
        y += block + GROUP_GAP
    height = max(y - GROUP_GAP + MARGIN, BALANCER[1] + 2 * MARGIN)
    balancer: dict[str, Any] = {
        "x": COLUMNS[0],
        "y": height / 2 - BALANCER[1] / 2,
        "w": BALANCER[0],
        "h": BALANCER[1],
    }
    _connect(balancer, laid_pools)
    wide = any(node["group"] for node in laid_pools)
    width = COLUMNS[2] + (GROUP[0] if wide else SERVER[0]) + MARGIN
    return {
        "width": width,
        "height": height,
        "balancer": balancer,
        "pools": laid_pools,
        "expanded": sorted(expanded & big),
    }
