"""The CDN edge: where media and static URLs point, and purges by surrogate key."""

from picscale.tiers.edge.factory import create_edge
from picscale.tiers.edge.port import Edge, EdgeUnavailable

__all__ = ["Edge", "EdgeUnavailable", "create_edge"]
