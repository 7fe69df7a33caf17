"""Classify: what kind of request this is, and what it carries of the user.

Notes the ``kind`` of each request: ``preview`` when the User-Agent is a known link-preview
fetcher (``PREVIEWERS``: each with where its string is documented), ``media`` for
image/video/audio fetches, else ``other``.  A
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

# The link-preview fetchers hush recognises: (User-Agent glob, who sends it, where the string is
# documented — or, for the ones their makers do not document, where it is recorded).  Globs match
# the whole User-Agent, case-insensitively; `*` is any characters.  This one table is what
# `kind: preview` in a policy means.  CRAWLERS is the community list of crawler User-Agents.
CRAWLERS = "https://github.com/monperrus/crawler-user-agents (crawler-user-agents.json)"
PREVIEWERS: tuple[tuple[str, str, str], ...] = (
    ("WhatsApp/*", "WhatsApp clients ('WhatsApp/2.19.305 A'); Signal Desktop's fetcher sends 'WhatsApp/2'",
     "https://github.com/signalapp/Signal-Desktop/blob/main/ts/linkPreviews/linkPreviewFetch.ts (USER_AGENT); "
     + CRAWLERS),
    ("*TelegramBot*", "Telegram's server-side preview fetcher: 'TelegramBot (like TwitterBot)'",
     "not documented by Telegram; " + CRAWLERS),
    ("facebookexternalhit/*", "Facebook, Messenger, Instagram link previews: 'facebookexternalhit/1.1 (+http://…)'",
     "https://developers.facebook.com/docs/sharing/webmasters/web-crawlers"),
    ("Slackbot-LinkExpanding*", "Slack's unfurler: 'Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)'",
     "https://api.slack.com/robots"),
    ("*Discordbot/*", "Discord's embeds: 'Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)'",
     "not documented by Discord beyond the URL in the string; " + CRAWLERS),
    ("Twitterbot/*", "X/Twitter cards: 'Twitterbot/1.0'",
     "https://developer.x.com/en/docs/x-for-websites/cards/guides/getting-started"),
    ("*SkypeUriPreview*", "Skype: 'Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5'", CRAWLERS),
    ("*Iframely*", "Iframely, the embed service behind many previewers: 'Iframely/1.3.1 (+https://iframely.com/docs/about)'",
     "https://iframely.com/docs/about; " + CRAWLERS),
    ("Gajim *", "Gajim's downloads of files and links others send (XEP-0066 out-of-band): 'Gajim 1.7.3'",
     "gajim/common/util/http.py in Gajim 1.7 (HTTPSession(user_agent=f'Gajim {app.version}')), "
     "https://dev.gajim.org/gajim/gajim; measured: docs/apps/gajim.md"),
    ("Synapse (bot;*", "a Matrix homeserver's URL preview: 'Synapse (bot; +https://github.com/matrix-org/synapse)' "
     "(for operators running hush in front of Synapse)",
     "synapse/media/url_previewer.py in Synapse (the User-Agent header), https://github.com/element-hq/synapse"),
)
PREVIEW_AGENTS = tuple(Glob.parse(pattern, casefold=True) for pattern, _, _ in PREVIEWERS)
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
