// The capture page: the list of captured messages (kept live by /api/v1/events), a search,
// and one message's view. Message data only ever reaches the page as text (textContent,
// attribute values): nothing from a message is parsed as HTML here; its HTML part is shown
// in a sandboxed iframe that the server also serves with a sandboxing Content-Security-Policy.
"use strict";

(() => {
  const LIMIT = 200;
  const token = new URLSearchParams(location.search).get("token");  // passed on to every API call
  const $ = (id) => document.getElementById(id);
  const list = $("messages");

  let rows = [];          // the summaries shown, newest first
  let more = false;       // the server has more than it sent
  let query = "";         // the search box's text when the list was asked for
  let generation = 0;     // of the latest load(): an older answer is dropped
  let sinceLoad = null;   // events that came while a load ran: {added: [], deleted: Set}
  let current = null;     // the id of the message shown

  function url(path, params = {}) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) if (value) search.set(key, value);
    if (token) search.set("token", token);
    const text = search.toString();
    return text ? `${path}?${text}` : path;
  }

  async function call(path, params, method = "GET") {
    const response = await fetch(url(path, params), { method, cache: "no-store" });
    if (!response.ok) {
      let message = response.statusText;
      try { message = (await response.json()).error || message; } catch { /* not JSON */ }
      throw new Error(`${response.status} ${message}`);
    }
    return response.status === 204 ? null : response.json();
  }

  // el("td", {class: "x"}, child, "text"): strings become text nodes, never markup.
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    node.append(...children);
    return node;
  }

  function say(text) { $("status").textContent = text; }

  function setState(state, text) {
    document.documentElement.dataset.state = state;
    say(text);
  }

  const person = (p) => (p.name && p.address ? `${p.name} <${p.address}>` : p.address || p.name);
  const people = (list) => list.map(person).join(", ");

  function when(iso) {
    const date = new Date(iso);
    const today = date.toDateString() === new Date().toDateString();
    return today ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
                 : date.toLocaleDateString([], { month: "short", day: "numeric" });
  }

  // -- the list ------------------------------------------------------------------------

  function row(m) {
    const to = m.to.length ? people(m.to) : m.envelope.to.join(", ");
    const link = el("a", { href: `#${m.id}`, class: "row" },
      el("span", { class: "from", text: m.from ? m.from.name || m.from.address : "(no sender)" }),
      el("time", { class: "when", datetime: m.received, title: new Date(m.received).toLocaleString(),
                   text: when(m.received) }),
      el("span", { class: "to", text: `To: ${to}` }),
      el("span", { class: "subject", text: m.subject || "(no subject)" }),
      el("span", { class: "snippet", text: m.snippet }));
    if (m.attachments) {
      const label = `${m.attachments} attachment${m.attachments === 1 ? "" : "s"}`;
      link.append(el("span", { class: "clip", title: label, "aria-label": label, text: String(m.attachments) }));
    }
    const item = el("li", { "data-id": m.id }, link);
    if (m.id === current) link.setAttribute("aria-current", "true");
    return item;
  }

  function counted() {
    const n = rows.length;
    $("count").textContent = `${n}${more ? "+" : ""} message${n === 1 ? "" : "s"}${query ? " found" : ""}`;
    $("empty").hidden = n > 0;
    $("empty").textContent = query ? "Nothing matches the search." : "No messages captured yet.";
  }

  function render() {
    list.replaceChildren(...rows.map(row));
    counted();
  }

  // The search box: plain words match the subject OR any address (one query for each of the
  // API's subject, from and to filters, the answers merged); "from:x", "to:x" and "subject:x"
  // ask for that field only, and all such terms must match. "bob subject:invoice" finds mail
  // with "invoice" in the subject and "bob" in an address or in the subject.
  function searches(text) {
    const fields = {};
    const words = [];
    for (const part of text.trim().split(/\s+/)) {
      const field = /^(from|to|subject):(.+)$/i.exec(part);
      if (field) fields[field[1].toLowerCase()] = field[2];
      else if (part) words.push(part);
    }
    const plain = words.join(" ");
    const open = ["subject", "from", "to"].filter((key) => !(key in fields));
    if (!plain || !open.length) return [fields];
    return open.map((key) => ({ ...fields, [key]: plain }));
  }

  async function load() {
    const mine = ++generation;
    const seen = sinceLoad = { added: [], deleted: new Set() };
    const text = $("query").value;
    let answers;
    try {
      answers = await Promise.all(searches(text).map((f) => call("/api/v1/messages", { ...f, limit: LIMIT })));
    } catch (error) {
      if (mine === generation) say(`Could not load the messages: ${error.message}`);
      return false;
    }
    if (mine !== generation) return false;
    sinceLoad = null;
    query = text.trim();
    const byId = new Map();
    for (const m of answers.flatMap((a) => a.messages).concat(query ? [] : seen.added)) byId.set(m.id, m);
    rows = [...byId.values()].filter((m) => !seen.deleted.has(m.id)).sort((a, b) => b.id - a.id);
    more = answers.some((a) => a.total > a.messages.length);
    render();
    return true;
  }

  let pending = null;
  function loadSoon() {
    clearTimeout(pending);
    pending = setTimeout(load, 250);
  }

  function added(m) {
    if (query || $("query").value.trim()) return loadSoon();  // only the server knows if it matches
    if (sinceLoad) sinceLoad.added.push(m);
    if (rows.some((r) => r.id === m.id)) return;
    rows.unshift(m);
    list.prepend(row(m));
    counted();
  }

  function removed(ids) {
    const gone = new Set(ids);
    if (sinceLoad) ids.forEach((id) => sinceLoad.deleted.add(id));
    rows = rows.filter((m) => !gone.has(m.id));
    for (const item of [...list.children]) if (gone.has(item.dataset.id)) item.remove();
    counted();
    if (gone.has(current)) {
      location.hash = "";
      say("The message shown was deleted.");
    }
  }

  function listen() {
    const events = new EventSource(url("/api/v1/events"));
    // (re)connected: load the list again, as events sent while away are not sent again
    events.addEventListener("open", async () => { if (await load()) setState("live", "Live"); });
    events.addEventListener("error", () => {
      if (events.readyState === EventSource.CLOSED) {  // refused: the browser gives up, so try later
        setState("offline", "Not connected: trying again in 10 s");
        setTimeout(listen, 10000);
      } else {
        setState("offline", "Reconnecting…");  // the browser retries by itself
      }
    });
    events.addEventListener("message", (e) => added(JSON.parse(e.data)));
    events.addEventListener("deleted", (e) => removed(JSON.parse(e.data).ids));
  }

  // -- one message ---------------------------------------------------------------------

  function table(tbody, pairs) {
    tbody.replaceChildren(...pairs.map(([name, value]) =>
      el("tr", {}, el("th", { scope: "row", text: name }), el("td", { text: value }))));
  }

  function tab(which) {
    for (const name of ["html", "text"]) {
      $(`tab-${name}`).setAttribute("aria-pressed", String(name === which));
      $(`${name}-pane`).hidden = name !== which;
    }
  }

  function attachments(m) {
    $("attachments").hidden = !m.attachments.length;
    $("attachments").querySelector("ul").replaceChildren(...m.attachments.map((a) => el("li", {},
      el("a", { href: url(`/api/v1/messages/${m.id}/attachments/${a.index}`), download: a.filename || "",
                text: a.filename || `part ${a.index}` }),
      ` ${a.content_type}, ${a.size.toLocaleString()} bytes`)));
  }

  async function show(id) {
    let m;
    try {
      m = await call(`/api/v1/messages/${id}`);
    } catch (error) {
      say(`Could not open message ${id}: ${error.message}`);
      return;
    }
    if (location.hash.slice(1) !== id) return;  // another was chosen meanwhile
    current = id;
    for (const link of list.querySelectorAll("a[aria-current]")) link.removeAttribute("aria-current");
    list.querySelector(`li[data-id="${id}"] a`)?.setAttribute("aria-current", "true");
    $("subject").textContent = m.subject || "(no subject)";
    const summary = [["From", m.from ? person(m.from) : ""], ["To", people(m.to)], ["Cc", people(m.cc)],
      ["Date", m.date ? new Date(m.date).toLocaleString() : ""],
      ["Received", new Date(m.received).toLocaleString()],
      ["Envelope", `${m.envelope.from || "<>"} → ${m.envelope.to.join(", ")}`],
      ["Size", `${m.size.toLocaleString()} bytes`]];
    table($("summary").tBodies[0], summary.filter(([, value]) => value));
    table($("all-headers").querySelector("tbody"), m.headers);
    $("all-headers").open = false;
    $("all-headers").querySelector("summary").textContent = `All headers (${m.headers.length})`;
    $("raw").href = url(`/api/v1/messages/${id}/raw`);
    $("text").textContent = m.text ?? "(this message has no text part)";
    $("html").src = m.html ? url(`/api/v1/messages/${id}/html`) : "about:blank";
    $("tab-html").hidden = !m.html;
    tab(m.html ? "html" : "text");
    attachments(m);
    $("view").hidden = false;
    $("panes").classList.add("viewing");
    $("subject").focus({ preventScroll: true });
  }

  function route() {
    const id = location.hash.slice(1);
    if (/^\d+$/.test(id)) return show(id);
    current = null;
    $("view").hidden = true;
    $("html").src = "about:blank";
    $("panes").classList.remove("viewing");
    for (const link of list.querySelectorAll("a[aria-current]")) link.removeAttribute("aria-current");
  }

  async function remove(path, question) {
    if (!confirm(question)) return;
    try {
      await call(path, {}, "DELETE");  // the list changes through the "deleted" event
    } catch (error) {
      say(`Could not delete: ${error.message}`);
    }
  }

  $("search").addEventListener("submit", (e) => { e.preventDefault(); load(); });
  $("query").addEventListener("input", loadSoon);
  $("delete-all").addEventListener("click", () => remove("/api/v1/messages", "Delete every captured message?"));
  $("delete-one").addEventListener("click", () => remove(`/api/v1/messages/${current}`, "Delete this message?"));
  $("tab-html").addEventListener("click", () => tab("html"));
  $("tab-text").addEventListener("click", () => tab("text"));
  window.addEventListener("hashchange", route);
  setState("offline", "Connecting…");
  load();
  listen();
  route();
})();
