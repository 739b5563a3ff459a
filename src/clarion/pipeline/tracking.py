"""Open and click tracking at render time: the planner's side of docs/tracking.md.

When a delivery's category tracks clicks, the http(s) links of its email's HTML (after its
layout) become signed redirects; when it tracks opens, a 1x1 image is added. The text part
is left as it is. Links already pointing at the tracking host, and unsubscribe links, are
never rewritten.

The planner renders synchronously, so the tenants' keys (derived from their webhook
secrets, read once per process: they never change) are loaded before a batch is rendered,
and only for tenants with a category that tracks something.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from clarion.domain.preferences import CategoryPolicy
from clarion.domain.tracking import rewrite, trackable
from clarion.pipeline.context import Context
from clarion.security.tracking import TrackingLinks, derive_key

EMAIL = "email"


@dataclass(frozen=True, slots=True)
class Tracker:
    """The tracking of one tenant's category."""

    links: TrackingLinks
    opens: bool
    clicks: bool
    # Links left alone: those already on the tracking host, and unsubscribe links.
    untouched: tuple[str, ...]

    def _link(self, delivery_id: str) -> Callable[[str], str | None]:
        def link(href: str) -> str | None:
            url = trackable(href)
            if url is None or url.lower().startswith(self.untouched):
                return None
            return self.links.click(delivery_id, url)

        return link

    def apply(self, content: Any, delivery_id: str) -> Any:
        """An email's rendered content with its HTML tracked; anything else as it is."""
        if not isinstance(content, Mapping):
            return content
        source = content.get("html")
        if not isinstance(source, str):
            return content
        link = self._link(delivery_id) if self.clicks else None
        pixel = self.links.pixel(delivery_id) if self.opens else None
        return {**content, "html": rewrite(source, link, pixel)}


class Trackers:
    """The trackers of the tenants' categories, keys cached per tenant."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._keys: dict[str, bytes] = {}
        settings = ctx.settings
        self._base = settings.tracking_base
        public = settings.public_url.rstrip("/")
        self._untouched = (
            f"{self._base}/t/".lower(),
            f"{public}/v1/unsubscribe/".lower(),
        )

    async def prepare(self, categories: Mapping[str, Mapping[str, CategoryPolicy]]) -> None:
        """Load the keys of the tenants whose categories track something."""
        for tenant_id, policies in categories.items():
            if tenant_id in self._keys:
                continue
            if any(p.track_opens or p.track_clicks for p in policies.values()):
                try:
                    secret = await self._ctx.webhook_secret(tenant_id)
                except KeyError:
                    continue  # no such tenant any more: nothing of its is sent
                self._keys[tenant_id] = derive_key(secret)

    def tracker(self, tenant_id: str, policy: CategoryPolicy) -> Tracker | None:
        """The tracker of a tenant's category; None when it tracks nothing."""
        if not (policy.track_opens or policy.track_clicks):
            return None
        key = self._keys.get(tenant_id)
        if key is None:
            return None
        links = TrackingLinks(self._base, key, tenant_id)
        return Tracker(links, policy.track_opens, policy.track_clicks, self._untouched)
