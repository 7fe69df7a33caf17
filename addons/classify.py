"""Classify: what kind of request this is, and what it carries of the user.

Notes the ``kind`` of each request: ``preview`` when the User-Agent is a known link-preview
fetcher, ``media`` for image/video/audio fetches, else ``other``.  A
User-Agent labels the *kind* of request, never the app (Signal Desktop sends
``WhatsApp/2``).  Notes what it ``carried``: the identifying headers as the app
sent them, before any action changes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hush.addons.flowinfo import identifiers
from hush.addons.notes import notes
from hush.daemon.policy.glob import Glob

if TYPE_CHECKING:
    from mitmproxy import http

PREVIEW_AGENTS = tuple(
    Glob.parse(p, casefold=True)
    for p in (
        "WhatsApp/*",  # WhatsApp clients, and Signal Desktop's preview fetcher
        "*TelegramBot*",
        "facebookexternalhit/*",
        "Slackbot-LinkExpanding*",
        "Discordbot/*",
        "Twitterbot/*",
        "SkypeUriPreview*",
        "*Iframely*",
        "Mozilla/5.0 (compatible; Element*",
    )
)
MEDIA_TYPES = ("image/", "video/", "audio/")
MEDIA_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".gif", ".webp", ".avif", ".svg", ".ico",
    ".mp4", ".webm", ".mp3", ".ogg", ".m4a",
)


def kind_of(user_agent: str | None, accept: str | None, path: str) -> str:
    if user_agent:
        folded = user_agent.lower()  # once, not once per pattern
        if any(g.matches_folded(folded) for g in PREVIEW_AGENTS):
            return "preview"
    if accept and accept.lstrip().lower().startswith(MEDIA_TYPES):
        return "media"
    if path.split("?", 1)[0].lower().endswith(MEDIA_SUFFIXES):
        return "media"
    return "other"


class Classify:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        headers = flow.request.headers
        carried = identifiers(headers)
        n = notes(flow)
        n.kind = kind_of(carried["user_agent"], headers.get("accept"), flow.request.path)
        n.carried = carried

    def http_connect(self, flow: http.HTTPFlow) -> None:
        n = notes(flow)
        n.kind = "other"
        n.carried = identifiers(flow.request.headers)


addons = [Classify()]
