// hush live view.  No framework, nothing fetched from elsewhere.  Every value that comes from a
// flow (URL, host, app, rule…) is put in the page with textContent, never parsed as HTML.
"use strict";

const MAX_ROWS = 500;          // decision rows in the table
const MAX_RECORDS = 5000;      // records kept for the per-app view
const CHART_MINUTES = 30;
const STATE_EVERY_MS = 1500;   // held flows, tunnels, tor, policy

const records = [];            // newest last
const tunnelRows = new Map();  // conn -> record (rows of a tunnel are written up to three times)
const seenApps = new Set();
const seenDecisions = new Set();
let state = null;
let history = null;            // GET /api/history: per app and hour, from the audit

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v == null ? "" : String(v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, String(v));
  }
  for (const c of children) if (c != null) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function when(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  return d.toLocaleTimeString([], { hour12: false });
}

function notice(text, error) {
  const n = document.getElementById("notice");
  n.textContent = text;
  n.className = error ? "error" : "";
  n.hidden = false;
}

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  let data = {};
  try { data = await r.json(); } catch (e) { data = { ok: false, error: `HTTP ${r.status}` }; }
  return data;
}

// ---- decisions ---------------------------------------------------------------------------

function egressOf(r) {
  if (r.route === "direct") return "direct";
  if (r.route === "tor" || r.egress === "tor") return "tor";
  return r.egress === "direct" ? "direct" : "none";
}

function filters() {
  return {
    app: document.getElementById("f-app").value,
    decision: document.getElementById("f-decision").value,
    site: document.getElementById("f-site").value.trim().toLowerCase(),
  };
}

function shown(r, f) {
  if (f.app && r.app !== f.app) return false;
  if (f.decision && r.decision !== f.decision) return false;
  if (f.site && !((r.site || "").includes(f.site) || (r.host || "").includes(f.site))) return false;
  return true;
}

function addOption(select, set, value) {
  if (value == null || set.has(value)) return;
  set.add(value);
  select.append(el("option", { value, text: value }));
}

function short(rule) {
  // a rule's FILE:LINE relative to the policy directory (the full path is the cell's title)
  const dir = state && state.policy && state.policy.dir;
  return rule && dir && rule.startsWith(dir + "/") ? rule.slice(dir.length + 1) : rule;
}

function row(r) {
  const tr = el("tr", { class: r.conn && r.ended == null ? "open" : "", "data-seq": r.seq });
  tr.append(
    el("td", { text: when(r.ts) }),
    el("td", { class: "app", text: r.app || "?" }),
    el("td", { class: `decision d-${r.decision}`, text: r.decision, title: r.note || "" }),
    el("td", { text: r.method || "" }),
    el("td", { class: "host", text: r.port ? `${r.host}:${r.port}` : r.host }),
    el("td", { class: "url", text: r.url || "" }),
    el("td", { text: r.route || "" }),
    el("td", { class: "rule", text: short(r.rule) || r.note || "", title: r.rule || "" }),
  );
  const cell = el("td");
  if (r.app && r.host) {
    cell.append(el("button", { type: "button", class: "make-rule", text: "make a rule",
                               onclick: () => ruleForm(tr, r) }));
  }
  tr.append(cell);
  return tr;
}

function ruleForm(tr, r) {
  const next = tr.nextElementSibling;
  if (next && next.classList.contains("rule-row")) { next.remove(); return; }
  const form = document.getElementById("rule-form").content.firstElementChild.cloneNode(true);
  const site = form.querySelector(".r-match option[value=site]");
  site.textContent = `this site (${r.site || r.host})`;
  form.querySelector(".r-match option[value=host]").textContent = `this host (${r.host})`;
  form.querySelector(".r-for").textContent = `for ${r.app}`;
  const holder = el("tr", { class: "rule-row" }, el("td", { colspan: 9 }, form));
  form.querySelector(".r-cancel").addEventListener("click", () => holder.remove());
  form.querySelector(".r-save").addEventListener("click", async () => {
    const match = form.querySelector(".r-match").value;
    const action = form.querySelector(".r-action").value;
    const value = match === "site" ? (r.site || r.host) : r.host;
    const result = await post("/api/rule", { app: r.app, match, value, action });
    if (result.ok) {
      notice(`Rule written to ${result.file} (${action} this ${match} ${value} for ${r.app}); policy set ${result.version} is running.`);
      holder.remove();
    } else {
      const errors = (result.errors || []).join("\n");
      notice(`The rule was not taken: ${result.error || "refused"}${errors ? "\n" + errors : ""}`, true);
    }
    refreshState();
  });
  tr.after(holder);
}

function renderDecisions() {
  const f = filters();
  const body = document.querySelector("#decisions tbody");
  const rows = [];
  for (let i = records.length - 1; i >= 0 && rows.length < MAX_ROWS; i--) {
    if (shown(records[i], f)) rows.push(row(records[i]));
  }
  body.replaceChildren(...rows);
}

function take(r) {
  if (r.conn) {
    const before = tunnelRows.get(r.conn);
    tunnelRows.set(r.conn, r);
    if (before) {
      const i = records.indexOf(before);
      if (i >= 0) records.splice(i, 1);
    }
    if (tunnelRows.size > MAX_RECORDS) tunnelRows.delete(tunnelRows.keys().next().value);
  }
  records.push(r);
  if (records.length > MAX_RECORDS) records.splice(0, records.length - MAX_RECORDS);
  addOption(document.getElementById("f-app"), seenApps, r.app);
  addOption(document.getElementById("f-decision"), seenDecisions, r.decision);
}

function live(r) {
  take(r);
  const f = filters();
  const body = document.querySelector("#decisions tbody");
  if (r.conn) { renderDecisions(); scheduleApps(); return; }  // a tunnel's row replaces its earlier one
  if (shown(r, f)) {
    body.prepend(row(r));
    while (body.children.length > MAX_ROWS) body.lastElementChild.remove();
  }
  scheduleApps();
}

// ---- per app -----------------------------------------------------------------------------

let appsTimer = null;
function scheduleApps() {
  if (appsTimer) return;
  appsTimer = setTimeout(() => { appsTimer = null; renderApps(); }, 300);
}

function chart(list) {
  // the last CHART_MINUTES minutes, per minute, from the records the page holds
  const now = Date.now() / 1000;
  const buckets = Array.from({ length: CHART_MINUTES }, () => ({ none: 0, tor: 0, direct: 0 }));
  for (const r of list) {
    const age = Math.floor((now - r.ts) / 60);
    if (age >= 0 && age < CHART_MINUTES) buckets[CHART_MINUTES - 1 - age][egressOf(r)] += 1;
  }
  return bars(buckets, `${CHART_MINUTES} min ago`, "now",
              i => `${CHART_MINUTES - 1 - i} min ago`, `flows per minute, last ${CHART_MINUTES} minutes`);
}

function hourly(app) {
  // the last 24 hours, per hour, from the audit (GET /api/history)
  if (!history) return null;
  const counts = history.apps[app] || {};
  const buckets = Array.from({ length: history.hours }, (_, i) => {
    const c = counts[String(history.since + i * 3600)] || {};
    return { none: c.none || 0, tor: c.tor || 0, direct: c.direct || 0 };
  });
  return bars(buckets, `${history.hours} h ago`, "this hour",
              i => `${history.hours - 1 - i} h ago`, `flows per hour, last ${history.hours} hours (audit)`);
}

function bars(buckets, left, right, ago, label) {
  const n = buckets.length;
  const max = Math.max(1, ...buckets.map(b => b.none + b.tor + b.direct));
  const w = 300, h = 60, bw = w / n;
  const s = svg("svg", { class: "chart", viewBox: `0 0 ${w} ${h + 10}`, role: "img", "aria-label": label });
  buckets.forEach((b, i) => {
    let y = h;
    for (const k of ["none", "tor", "direct"]) {
      const bh = (b[k] / max) * h;
      if (bh > 0) {
        y -= bh;
        const rect = svg("rect", { class: k, x: i * bw + 0.5, y, width: Math.max(bw - 1, 0.5), height: bh });
        const t = svg("title", {});
        t.textContent = `${ago(i)}: ${b[k]} ${k === "none" ? "kept from the site" : k}`;
        rect.append(t);
        s.append(rect);
      }
    }
  });
  s.append(svg("line", { x1: 0, y1: h + 0.5, x2: w, y2: h + 0.5, stroke: "#999" }));
  const l = svg("text", { x: 0, y: h + 9, "font-size": 8, fill: "#666" });
  l.textContent = left;
  const r = svg("text", { x: w, y: h + 9, "font-size": 8, fill: "#666", "text-anchor": "end" });
  r.textContent = right;
  s.append(l, r);
  return s;
}

function renderApps() {
  const byApp = new Map();
  for (const r of records) {
    if (!r.app) continue;
    if (!byApp.has(r.app)) byApp.set(r.app, []);
    byApp.get(r.app).push(r);
  }
  const apps = new Set([...Object.keys((state && state.apps) || {}), ...byApp.keys(),
                        ...Object.keys((history && history.apps) || {})]);
  const cards = [];
  for (const app of [...apps].sort()) {
    const list = byApp.get(app) || [];
    const info = (state && state.apps && state.apps[app]) || {};
    const sites = new Map(), decisions = new Map();
    for (const r of list) {
      const key = r.site || r.host;
      sites.set(key, (sites.get(key) || 0) + 1);
      decisions.set(r.decision, (decisions.get(r.decision) || 0) + 1);
    }
    const kept = list.filter(r => egressOf(r) === "none").length;
    const siteList = el("ul", { class: "sites" });
    for (const [site, n] of [...sites].sort((a, b) => b[1] - a[1]).slice(0, 12)) {
      siteList.append(el("li", { text: `${site} — ${n}` }));
    }
    const decisionList = el("p", { class: "decisions" });
    decisionList.textContent = [...decisions].map(([d, n]) => `${d} ${n}`).join(" · ") || "nothing yet";
    const held = ((state && state.held) || []).filter(h => h.app === app).length;
    cards.push(el("div", { class: "app", "data-app": app },
      el("h3", { text: app }),
      el("div", { class: "file", text: info.file ? `${info.file} (default: ${info.default})` : "no policy loaded" }),
      decisionList,
      el("div", { class: "prevented", text: `${kept} of ${list.length} kept from the site; ${held} held now` }),
      el("div", { class: "chart-label", text: `last ${CHART_MINUTES} minutes` }),
      chart(list),
      history ? el("div", { class: "chart-label", text: `last ${history.hours} hours (audit)` }) : null,
      hourly(app),
      el("div", { class: "legend" }, el("span", { class: "none", text: "■ kept from the site" }),
         el("span", { class: "tor", text: "■ via Tor" }), el("span", { class: "direct", text: "■ direct" })),
      el("div", { text: "sites contacted:" }), siteList));
  }
  document.getElementById("apps").replaceChildren(...cards);
}

// ---- state: held flows, tunnels, tor, policy --------------------------------------------

function renderState() {
  const policy = document.getElementById("policy");
  const last = state.policy.last_reload;
  policy.textContent = `policy set ${state.policy.version}` + (last && !last.ok ? " (last reload refused)" : "");
  policy.className = "pill" + (last && !last.ok ? " bad" : "");
  policy.title = last && !last.ok ? last.errors.join("\n") : state.policy.dir;
  const tor = document.getElementById("tor");
  const t = state.tor;
  if (!t || t.state === "off") { tor.textContent = "tor: off"; tor.className = "pill"; }
  else {
    tor.textContent = `tor: ${t.state}, bootstrapped ${t.bootstrap}%` + (t.bootstrap_summary ? ` (${t.bootstrap_summary})` : "");
    tor.className = "pill " + (t.ready ? "ok" : "bad");
  }
  const held = document.querySelector("#held tbody");
  held.replaceChildren(...state.held.map(h => el("tr", { "data-id": h.id },
    el("td", { text: h.app }), el("td", { text: `${h.kind}, ${h.held_s}s` }), el("td", { class: "url", text: h.url }),
    el("td", { text: h.then || "" }), el("td", { class: "rule", text: h.rule || "" }),
    el("td", {},
      el("button", { type: "button", class: "send-now", text: "send now as the rule says",
                     onclick: () => heldAction(h.id, "release") }),
      el("button", { type: "button", class: "drop", text: "drop", onclick: () => heldAction(h.id, "drop") })))));
  document.getElementById("held").hidden = state.held.length === 0;
  document.getElementById("held-empty").hidden = state.held.length !== 0;
  const tunnels = document.querySelector("#tunnels tbody");
  tunnels.replaceChildren(...state.tunnels.map(r => el("tr", {},
    el("td", { text: when(r.ts) }), el("td", { text: r.app }), el("td", { class: "host", text: `${r.host}:${r.port}` }),
    el("td", { class: `d-${r.decision}`, text: r.decision }), el("td", { text: r.route }),
    el("td", { text: `${r.bytes_up ?? "?"} / ${r.bytes_down ?? "?"}` }), el("td", { class: "rule", text: short(r.rule) || "", title: r.rule || "" }))));
  document.getElementById("tunnels").hidden = state.tunnels.length === 0;
  document.getElementById("tunnels-empty").hidden = state.tunnels.length !== 0;
  for (const app of Object.keys(state.apps)) addOption(document.getElementById("f-app"), seenApps, app);
  renderTor();
}

function renderTor() {
  const t = state && state.tor;
  const line = document.getElementById("tor-state");
  if (!t || t.state === "off") line.textContent = "tor: off (no policy sends anything through Tor)";
  else {
    line.textContent = `tor ${t.state}: bootstrapped ${t.bootstrap}%` +
      (t.bootstrap_summary ? ` — ${t.bootstrap_summary}` : "") + (t.reason ? ` (${t.reason})` : "") +
      (t.circuit_established ? "; a circuit is established" : "");
  }
  // circuits per isolation group, as the recent flows through Tor used them
  const groups = new Map();
  for (const r of records) {
    if (!r.tor_isolation) continue;
    if (!groups.has(r.tor_isolation)) groups.set(r.tor_isolation, { circuits: new Map(), flows: 0 });
    const g = groups.get(r.tor_isolation);
    g.flows += 1;
    if (r.tor_circuit) g.circuits.set(r.tor_circuit, r.tor_exit || "");
  }
  const body = document.querySelector("#circuits tbody");
  body.replaceChildren(...[...groups].map(([group, g]) => el("tr", {},
    el("td", { class: "host", text: group }),
    el("td", { text: [...g.circuits].map(([c, exit]) => exit ? `${c} (${exit})` : c).join(", ") || "—" }),
    el("td", { text: g.flows }))));
  document.getElementById("circuits").hidden = groups.size === 0;
}

async function heldAction(id, what) {
  const result = await post("/api/held", { id, do: what });
  if (!result.ok) notice(result.error || "refused", true);
  refreshState();
}

async function refreshState() {
  try {
    const r = await fetch("/api/state", { credentials: "same-origin" });
    if (r.status === 403) {  // a daemon started since: its token is new
      notice("This page's token is no longer valid (hush was restarted): open the live view again with `hush ui`.", true);
      return;
    }
    if (!r.ok) return;
    const first = state === null;
    state = await r.json();
    renderState();
    if (first) renderDecisions();  // rows that came before it: their rule's file, relative
    scheduleApps();
  } catch (e) { /* the daemon is away: the event stream says so */ }
}

async function refreshHistory() {
  try {
    const r = await fetch("/api/history", { credentials: "same-origin" });
    if (!r.ok) return;
    history = await r.json();
    scheduleApps();
  } catch (e) { /* the daemon is away */ }
}

// ---- questions (the ask action) ----------------------------------------------------------

const questions = new Map();
const SCOPES = { once: "once", "1h": "for this site, 1 hour", restart: "for this site, until restart",
                 always: "always (writes a rule)" };

function renderQuestions() {
  const box = document.getElementById("questions");
  box.replaceChildren(...[...questions.values()].map(q => {
    const card = el("div", { class: "question", "data-id": q.id },
      el("div", { class: "what", text: `${q.app} wants to reach ${q.host}` }),
      el("div", { class: "url", text: q.url || "" }),
      el("div", { class: "rule", text: `${short(q.rule) || ""} · ${q.waiting} waiting · ${q.fallback} after ${q.timeout}s`,
                  title: q.rule || "" }));
    for (const scope of q.scopes) {
      const line = el("div", {}, el("span", { class: "scope", text: `${SCOPES[scope] || scope}: ` }));
      for (const verdict of q.verdicts) {
        line.append(el("button", { type: "button", class: `answer a-${verdict}-${scope}`, text: verdict,
          onclick: async () => {
            const result = await post("/api/answer", { id: q.id, verdict, scope });
            if (!result.ok) notice(result.error || "refused", true);
          } }));
      }
      card.append(line);
    }
    return card;
  }));
  document.getElementById("questions-section").hidden = questions.size === 0;
}

// ---- the event stream ----------------------------------------------------------------------

function connect() {
  const conn = document.getElementById("conn");
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => { conn.textContent = "live"; conn.className = "pill ok"; });
  source.addEventListener("error", () => { conn.textContent = "reconnecting…"; conn.className = "pill bad"; });
  source.addEventListener("hello", e => {
    const data = JSON.parse(e.data);
    records.length = 0;
    tunnelRows.clear();
    for (const r of data.records) take(r);
    questions.clear();
    for (const q of data.questions) questions.set(q.id, q);
    renderDecisions();
    renderQuestions();
    scheduleApps();
  });
  source.addEventListener("decision", e => live(JSON.parse(e.data)));
  source.addEventListener("question", e => { const q = JSON.parse(e.data); questions.set(q.id, q); renderQuestions(); });
  source.addEventListener("question-closed", e => { questions.delete(JSON.parse(e.data).id); renderQuestions(); });
}

document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["f-app", "f-decision", "f-site"]) {
    document.getElementById(id).addEventListener("input", renderDecisions);
  }
  document.getElementById("filters").addEventListener("submit", e => e.preventDefault());
  connect();
  refreshState();
  setInterval(refreshState, STATE_EVERY_MS);
  refreshHistory();
  setInterval(refreshHistory, 60_000);
});
