// fakesmtp's page: the captured mail, kept up to date by the event stream.
//
// The data comes from the Mailpit API v1 (/api/v1/...), so the page shows what a
// Mailpit client would see; /api/events says when to look again. A message's HTML is
// shown by /view/{ID}.html in an iframe that may not run script, whose response
// forbids remote content until "Load remote content" asks for /view/{ID}.html?remote=1.
// Nothing from a message is ever inserted as HTML into this page: text only.
"use strict";

(() => {
  const PAGE = 100; // messages listed at a time; "Show more" adds as many again

  const $ = (selector, root = document) => root.querySelector(selector);
  const state = { query: "", limit: PAGE, openId: null, remote: false };

  // The API --------------------------------------------------------------------------

  const path = (id, rest = "") => `/api/v1/message/${encodeURIComponent(id)}${rest}`;

  async function request(url, options = {}) {
    const response = await fetch(url, options);
    if (!response.ok) {
      const error = new Error(`${options.method || "GET"} ${url}: ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return response;
  }

  const api = {
    async list(query, limit) {
      const params = new URLSearchParams({ limit: String(limit) });
      if (query) params.set("query", query);
      const url = `/api/v1/${query ? "search" : "messages"}?${params}`;
      return (await request(url)).json();
    },
    async message(id) {
      return (await request(path(id))).json();
    },
    async headers(id) {
      return (await request(path(id, "/headers"))).json();
    },
    async raw(id) {
      return (await request(path(id, "/raw"))).text();
    },
    async remove(ids) {
      // No body: every message (Mailpit's DELETE /api/v1/messages).
      const options = { method: "DELETE" };
      if (ids) {
        options.headers = { "Content-Type": "application/json" };
        options.body = JSON.stringify({ IDs: ids });
      }
      await request("/api/v1/messages", options);
    },
  };

  // Small formatting helpers ------------------------------------------------------------

  const address = (a) => (!a ? "" : a.Name ? `${a.Name} <${a.Address}>` : a.Address);
  const addresses = (list) => (list || []).map(address).join(", ");
  const shortAddress = (a) => (!a ? "" : a.Name || a.Address);

  function size(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} kB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }

  function when(iso) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // The list --------------------------------------------------------------------------

  let listing = null; // the list request in flight
  let again = false; // something changed while it was in flight: list once more after it

  // Called for every event and every action: at most one request in flight and one
  // waiting, however many events arrive, and the last one always sees the last change.
  function refresh() {
    if (listing) {
      again = true;
      return;
    }
    listing = loadList()
      .catch((error) => {
        $("#count").textContent = `Cannot list messages: ${error.message}`;
      })
      .finally(() => {
        listing = null;
        if (again) {
          again = false;
          refresh();
        }
      });
  }

  async function loadList() {
    const data = await api.list(state.query, state.limit);
    renderList(data);
  }

  function renderList(data) {
    const items = data.messages.map(listItem);
    $("#messages").replaceChildren(...items);
    const shown = data.messages.length;
    const matching = data.messages_count;
    const noun = data.total === 1 ? "message" : "messages";
    $("#count").textContent = state.query
      ? `${matching} of ${data.total} ${noun} match`
      : `${data.total} ${noun}`;
    $("#empty").hidden = shown > 0;
    $("#more").hidden = shown >= matching;
  }

  function listItem(summary) {
    const item = element("li", "item");
    item.dataset.id = summary.ID;
    item.tabIndex = 0;
    if (summary.Read === false) item.classList.add("unread");
    if (summary.ID === state.openId) item.classList.add("selected");
    const top = element("div", "line");
    top.append(element("span", "from", shortAddress(summary.From) || "(no sender)"));
    top.append(element("time", "when", when(summary.Created)));
    const subject = element("div", "subject", summary.Subject || "(no subject)");
    if (summary.Attachments > 0) {
      // Words, not a paperclip glyph: the fonts of a bare CI or server box lack it.
      const files = summary.Attachments === 1 ? "1 file" : `${summary.Attachments} files`;
      const clip = element("span", "clip", files);
      clip.title = `${summary.Attachments} attachment(s)`;
      subject.prepend(clip);
    }
    const bottom = element("div", "line muted");
    bottom.append(element("span", "to", `To: ${addresses(summary.To) || "-"}`));
    bottom.append(element("span", "size", size(summary.Size)));
    item.append(top, subject, element("div", "snippet", summary.Snippet || ""), bottom);
    const open = () => {
      location.hash = encodeURIComponent(summary.ID);
    };
    item.addEventListener("click", open);
    item.addEventListener("keydown", (event) => {
      if (event.key === "Enter") open();
    });
    return item;
  }

  // One message -----------------------------------------------------------------------

  function placeholder(text) {
    $("#message").replaceChildren(element("p", "placeholder", text));
  }

  function closeMessage() {
    state.openId = null;
    document.body.classList.remove("reading");
    placeholder("Select a message.");
    for (const item of document.querySelectorAll("#messages .selected")) {
      item.classList.remove("selected");
    }
  }

  async function openMessage(id) {
    state.openId = id;
    state.remote = false;
    document.body.classList.add("reading");
    for (const item of document.querySelectorAll("#messages .item")) {
      item.classList.toggle("selected", item.dataset.id === id);
    }
    let message;
    try {
      message = await api.message(id);
    } catch (error) {
      if (state.openId === id) {
        placeholder(error.status === 404 ? "This message is gone." : error.message);
      }
      return;
    }
    if (state.openId !== id) return; // another message was opened meanwhile
    $("#message").replaceChildren(messageView(message));
    refresh(); // it is read now
  }

  function messageView(m) {
    const view = $("#message-template").content.firstElementChild.cloneNode(true);
    const field = (name) => $(`[data-field="${name}"]`, view);
    field("subject").textContent = m.Subject || "(no subject)";
    field("from").textContent = address(m.From);
    field("to").textContent = addresses(m.To);
    for (const name of ["cc", "bcc"]) {
      const list = m[name === "cc" ? "Cc" : "Bcc"];
      if (list && list.length) {
        field(name).textContent = addresses(list);
        $(`[data-row="${name}"]`, view).hidden = false;
      }
    }
    field("date").textContent = when(m.Date);
    const raw = $('[data-link="raw"]', view);
    raw.href = path(m.ID, "/raw");
    raw.download = `${m.ID}.eml`;
    renderAttachments(field("attachments"), m);

    $('[data-action="close"]', view).addEventListener("click", () => {
      location.hash = "";
    });
    $('[data-action="delete"]', view).addEventListener("click", async () => {
      await api.remove([m.ID]);
      location.hash = "";
      refresh();
    });
    const remote = $('[data-action="remote"]', view);
    remote.hidden = !m.HTML;
    remote.addEventListener("click", () => {
      state.remote = true;
      remote.disabled = true;
      remote.textContent = "Remote content loaded";
      showHTML(view, m);
    });

    const loaders = {
      html: () => showHTML(view, m),
      text: () => {
        $('[data-panel="text"]', view).textContent = m.Text || "(no text part)";
      },
      headers: async () => renderHeaders($('[data-panel="headers"]', view), await api.headers(m.ID)),
      raw: async () => {
        $('[data-panel="raw"]', view).textContent = await api.raw(m.ID);
      },
    };
    const loaded = new Set();
    const select = (name) => {
      for (const tab of view.querySelectorAll("[data-tab]")) {
        tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
      }
      for (const panel of view.querySelectorAll("[data-panel]")) {
        panel.hidden = panel.dataset.panel !== name;
      }
      if (!loaded.has(name)) {
        loaded.add(name);
        Promise.resolve(loaders[name]()).catch((error) => {
          $(`[data-panel="${name}"]`, view).textContent = error.message;
        });
      }
    };
    for (const tab of view.querySelectorAll("[data-tab]")) {
      tab.addEventListener("click", () => select(tab.dataset.tab));
    }
    $('[data-tab="html"]', view).hidden = !m.HTML;
    select(m.HTML ? "html" : "text");
    return view;
  }

  function renderAttachments(list, m) {
    const parts = [
      ...(m.Attachments || []).map((a) => [a, false]),
      ...(m.Inline || []).map((a) => [a, true]),
    ];
    for (const [part, inline] of parts) {
      const item = element("li");
      const link = element("a", null, part.FileName || `part ${part.PartID}`);
      link.href = path(m.ID, `/part/${encodeURIComponent(part.PartID)}`);
      link.download = part.FileName || `part-${part.PartID}`;
      item.append(link);
      const facts = [part.ContentType, size(part.Size)];
      if (inline) facts.push("inline");
      item.append(element("span", "muted", ` ${facts.join(", ")}`));
      list.append(item);
    }
    list.hidden = parts.length === 0;
  }

  function renderHeaders(table, headers) {
    const rows = [];
    for (const name of Object.keys(headers).sort()) {
      for (const value of headers[name]) {
        const row = element("tr");
        row.append(element("th", null, name), element("td", null, value));
        rows.push(row);
      }
    }
    table.replaceChildren(...rows);
  }

  function showHTML(view, m) {
    const frame = element("iframe");
    // No allow-scripts: nothing in the mail runs. allow-same-origin only lets this page
    // read the frame's height; allow-popups lets links open in a new tab.
    frame.setAttribute("sandbox", "allow-same-origin allow-popups allow-popups-to-escape-sandbox");
    frame.setAttribute("referrerpolicy", "no-referrer");
    frame.title = "HTML of the message";
    frame.src = `/view/${encodeURIComponent(m.ID)}.html${state.remote ? "?remote=1" : ""}`;
    frame.addEventListener("load", () => {
      const doc = frame.contentDocument;
      if (doc && doc.documentElement) {
        frame.style.height = `${doc.documentElement.scrollHeight + 20}px`;
      }
    });
    $('[data-panel="html"]', view).replaceChildren(frame);
  }

  // Events, the search box, the buttons -------------------------------------------------

  function follow() {
    const live = $("#live");
    const source = new EventSource("/api/events");
    const changed = (event) => {
      live.textContent = "live";
      live.classList.add("on");
      if (event.type === "clear" && state.openId !== null) {
        placeholder("This message is gone.");
      } else if (event.type === "delete" && JSON.parse(event.data).id === state.openId) {
        placeholder("This message is gone.");
      }
      refresh();
    };
    // `ready` comes first on every (re)connection, `gap` after lost events: list again.
    for (const name of ["ready", "gap", "message", "delete", "clear"]) {
      source.addEventListener(name, changed);
    }
    source.addEventListener("error", () => {
      live.textContent = "reconnecting";
      live.classList.remove("on");
    });
  }

  function route() {
    const id = decodeURIComponent(location.hash.slice(1));
    if (id) openMessage(id);
    else closeMessage();
  }

  function start() {
    let typing = null;
    const search = () => {
      clearTimeout(typing);
      const query = $("#query").value.trim();
      if (query === state.query) return;
      state.query = query;
      state.limit = PAGE;
      refresh();
    };
    $("#query").addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(search, 250);
    });
    $("#search").addEventListener("submit", (event) => {
      event.preventDefault();
      search();
    });
    $("#more").addEventListener("click", () => {
      state.limit += PAGE;
      refresh();
    });
    $("#delete-all").addEventListener("click", async () => {
      if (!window.confirm("Delete every message?")) return;
      await api.remove(null);
      location.hash = "";
      refresh();
    });
    window.addEventListener("hashchange", route);
    follow();
    refresh();
    route();
  }

  start();
})();
