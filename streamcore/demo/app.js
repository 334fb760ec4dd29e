// streamcore demo page: one answer over SSE and over WebSocket, side by side.
// Plain browser JavaScript, no build step, nothing from another origin.
//
// SSE pane: POST /v1/chat/completions starts the stream; that response (the stream's
// owner) is read to its end in the background, so the generation lives whatever the shown
// reader does (under --disconnect-policy cancel a stream with no reader left is cancelled
// at once; under the default, linger, after the linger window).  The text shown comes from a second reader of the same stream: an
// EventSource on GET /v1/streams/{id}.  "Cut" closes that reader; the page reconnects with
// fetch(GET /v1/streams/{id}, Last-Event-ID) (an EventSource sends that header only on its
// own reconnects), and the server replays what was missed, then the live tail.
// WebSocket pane: GET /v1/ws, {"type": "request"} then chunk/done/cancelled/error messages.
"use strict";

const RECONNECT_DELAY_MS = 400;  // long enough to see the cut on the page

class Pane {
  constructor(id) {
    this.el = document.getElementById(id);
    this.textEl = this.el.querySelector("[data-text]");
    this.logEl = this.el.querySelector("[data-log]");
    this.reset();
  }

  reset() {
    // What the tests read (window.demo.sse / window.demo.ws), and what the pane shows.
    this.state = {status: "idle", text: "", tokens: 0, reconnects: 0, events: 0,
                  ttftMs: null, rate: null, last: null, finish: null, errors: [],
                  log: [], streamId: null, sentAt: 0, firstAt: null, lastAt: null};
    this.segment = null;
    this.textEl.textContent = "";
    this.logEl.textContent = "";
    this.render();
  }

  set(status) { this.state.status = status; this.render(); updateButtons(); }
  get active() { return ["connecting", "streaming", "cut", "reconnecting", "cancelling"]
    .includes(this.state.status); }

  note(message, kind) {
    this.state.log.push(message);
    const item = document.createElement("li");
    item.textContent = message;
    if (kind) item.className = kind;
    this.logEl.appendChild(item);
    this.logEl.scrollTop = this.logEl.scrollHeight;
  }

  problem(message) { this.state.errors.push(message); this.note(message, "bad"); }

  fail(message) { this.problem(message); this.set("error"); updateButtons(); }

  // A new span for the text that follows (the resumed part is highlighted).
  startSegment(className) {
    this.segment = document.createElement("span");
    if (className) this.segment.className = className;
    this.textEl.appendChild(this.segment);
  }

  token(text) {
    const s = this.state;
    const now = performance.now();
    if (s.firstAt === null) { s.firstAt = now; s.ttftMs = now - s.sentAt; }
    s.lastAt = now;
    s.tokens += 1;
    s.text += text;
    if (this.segment === null) this.startSegment("");
    this.segment.appendChild(document.createTextNode(text));
    if (s.tokens > 1 && s.lastAt > s.firstAt) {
      s.rate = (s.tokens - 1) / ((s.lastAt - s.firstAt) / 1000);
    }
    this.render();
  }

  // One chat.completion.chunk (the same object on SSE and WebSocket).
  chunk(chunk) {
    for (const choice of chunk.choices || []) {
      const content = choice.delta && choice.delta.content;
      if (content) this.token(content);
      if (choice.finish_reason) this.state.finish = choice.finish_reason;
    }
  }

  render() {
    const s = this.state;
    const show = (name, value) => {
      const el = this.el.querySelector(`[data-stat=${name}]`);
      el.textContent = value;
      if (name === "status") el.dataset.status = value;
    };
    show("status", s.status);
    show("ttft", s.ttftMs === null ? "–" : `${Math.round(s.ttftMs)} ms`);
    show("rate", s.rate === null ? "–" : s.rate.toFixed(1));
    show("tokens", String(s.tokens));
    show("reconnects", String(s.reconnects));
    show("last", s.last === null ? "–" : String(s.last));
  }
}

const sse = new Pane("pane-sse");
const ws = new Pane("pane-ws");
window.demo = {get sse() { return sse.state; }, get ws() { return ws.state; },
               get streams() { return inspector.rows; }};

function errorText(doc, status) {
  const error = doc && doc.error;
  if (!error) return `HTTP ${status}`;
  return `${error.message}` + (error.param ? ` (param: ${error.param})` : "")
    + (error.code ? ` [${error.code}]` : "");
}

// Split an SSE byte stream into events: {id, data} (a fetch reader can set headers, such
// as Last-Event-ID, which an EventSource cannot).
async function* sseEvents(response, signal) {
  const reader = response.body.getReader();
  signal.addEventListener("abort", () => reader.cancel().catch(() => {}));
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true}).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("id:")) id = line.slice(3).trimStart();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield {id, data: data.join("\n")};
    }
  }
}

// ------------------------------------------------------------------------------- SSE pane

let sseRun = null;

class SSERun {
  constructor(body) {
    this.body = body;
    this.owner = new AbortController();  // the POST that owns the stream
    this.reader = null;                  // the shown reader: an EventSource or a fetch
    this.lastSeq = 0;
    this.ended = false;
  }

  async start() {
    sse.set("connecting");
    sse.state.sentAt = performance.now();
    let response;
    try {
      response = await fetch("/v1/chat/completions", {
        method: "POST", headers: {"content-type": "application/json"},
        body: JSON.stringify({...this.body, stream: true}), signal: this.owner.signal});
    } catch (e) {
      if (!this.ended) sse.fail(`POST failed: ${e}`);
      return;
    }
    if (!response.ok) {
      sse.fail(errorText(await response.json().catch(() => null), response.status));
      return;
    }
    const id = response.headers.get("x-stream-id");
    sse.state.streamId = id;
    sse.note(`POST ${response.status}: stream ${id}; its owner reads it in the background`);
    this.drainOwner(response);
    this.follow();
  }

  async drainOwner(response) {
    try {
      for await (const _ of sseEvents(response, this.owner.signal)) { /* keep it alive */ }
    } catch (e) { /* aborted by cancel */ }
  }

  // The shown reader, first time: an EventSource from the start of the stream.
  follow() {
    const source = new EventSource(`/v1/streams/${sse.state.streamId}`);
    this.reader = {close: () => source.close()};
    source.onopen = () => { if (!this.ended) sse.set("streaming"); };
    source.onmessage = (e) => this.event(e.lastEventId, e.data);
    source.onerror = () => {
      if (this.ended || this.reader === null) return;
      if (source.readyState === EventSource.CONNECTING) {
        // The browser reconnects by itself, with Last-Event-ID: a resume too.
        sse.state.reconnects += 1;
        sse.note("connection lost; the EventSource reconnects with Last-Event-ID");
        sse.set("reconnecting");
      } else {
        sse.fail("the EventSource closed");
      }
    };
  }

  cut() {
    if (this.ended || this.reader === null) return;
    this.reader.close();
    this.reader = null;
    const last = `${sse.state.streamId}-${this.lastSeq}`;
    sse.note(`cut after event ${last}: the shown reader is gone`, "bad");
    sse.set("cut");
    updateButtons();
    setTimeout(() => this.resume(last), RECONNECT_DELAY_MS);
  }

  // After a cut: the rest of the stream from its log, then the live tail.
  async resume(last) {
    if (this.ended) return;
    const aborter = new AbortController();
    this.reader = {close: () => aborter.abort()};
    sse.state.reconnects += 1;
    sse.set("reconnecting");
    sse.note(`GET /v1/streams/${sse.state.streamId} with Last-Event-ID: ${last} `
             + "(the text in green came through this resume)");
    sse.startSegment("resumed");
    try {
      const response = await fetch(`/v1/streams/${sse.state.streamId}`,
                                   {headers: {"Last-Event-ID": last}, signal: aborter.signal});
      if (!response.ok) {
        sse.fail(errorText(await response.json().catch(() => null), response.status));
        return;
      }
      sse.set("streaming");
      updateButtons();
      for await (const event of sseEvents(response, aborter.signal)) {
        this.event(event.id, event.data);
        if (this.ended) break;
      }
    } catch (e) {
      if (!aborter.signal.aborted) sse.fail(`resume failed: ${e}`);
    }
  }

  event(id, data) {
    if (this.ended) return;
    if (data === "[DONE]") {
      this.end("done", `[DONE] after ${this.lastSeq} events, each once and in order`, "good");
      return;
    }
    // <stream id>-<epoch>-<seq>: the seq after the last "-" (docs/resume.md).
    const prefix = `${sse.state.streamId}-`;
    const seq = id && id.startsWith(prefix) ? Number(id.slice(id.lastIndexOf("-") + 1)) : NaN;
    if (seq !== this.lastSeq + 1) {
      sse.problem(`event ${id} after seq ${this.lastSeq}: ` +
                  (seq <= this.lastSeq ? "a repeat" : "a gap"));
    }
    if (seq > this.lastSeq) this.lastSeq = seq;
    sse.state.events += 1;
    sse.state.last = id;
    const doc = JSON.parse(data);
    if (doc.error) {
      if (doc.error.code === "cancelled") this.end("cancelled", `server: ${doc.error.message}`);
      else { sse.problem(errorText(doc, 200)); this.end("error"); }
      return;
    }
    sse.chunk(doc);
  }

  end(status, message, kind) {
    this.ended = true;
    if (this.reader) { this.reader.close(); this.reader = null; }
    if (message) sse.note(message, kind);
    sse.set(status);
    updateButtons();
  }

  // Every reader leaves (the owner too), and the generation is cancelled now: under the
  // default disconnect policy (linger) it would otherwise go on for the linger window.
  async cancel() {
    if (this.ended) return;
    this.owner.abort();
    this.end("cancelled", "cancelled: every reader of the stream left");
    const id = sse.state.streamId;
    if (!id) return;
    await fetch(`/v1/streams/${id}/cancel`, {method: "POST"}).catch(() => {});
    // Ask the server what became of the stream: its log ends with the cancel.
    await new Promise((resolve) => setTimeout(resolve, 200));
    const aborter = new AbortController();
    const timer = setTimeout(() => aborter.abort(), 1000);
    try {
      const response = await fetch(`/v1/streams/${id}`, {
        headers: {"Last-Event-ID": `${id}-${this.lastSeq}`}, signal: aborter.signal});
      for await (const event of sseEvents(response, aborter.signal)) {
        if (event.data.startsWith("{")) {
          const doc = JSON.parse(event.data);
          if (doc.error) { sse.note(`server: ${doc.error.message}`); break; }
        } else if (event.data === "[DONE]") {
          sse.note("server: the stream had already finished"); break;
        }
      }
    } catch (e) {
      sse.note("the server still holds the stream (it lingers): it stops when the "
               + "linger window ends");
    } finally {
      clearTimeout(timer);
      aborter.abort();
    }
  }
}

// ------------------------------------------------------------------------- WebSocket pane

let socket = null;
let socketOpened = 0;
let wsRequest = null;   // {id, lastSeq, cancelSent, ended}
let requestCount = 0;

function openSocket() {
  if (socket && socket.readyState === WebSocket.OPEN) return Promise.resolve(socket);
  const url = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/v1/ws`;
  socket = new WebSocket(url);
  socketOpened += 1;
  if (socketOpened > 1) { ws.state.reconnects += 1; ws.note("the socket had closed: reopened"); }
  socket.onmessage = (e) => wsMessage(JSON.parse(e.data));
  socket.onclose = (e) => {
    if (wsRequest && !wsRequest.ended) {
      wsRequest.ended = true;
      ws.fail(`the socket closed (${e.code}): a WebSocket request ends with its socket`);
    }
  };
  return new Promise((resolve, reject) => {
    socket.onopen = () => resolve(socket);
    socket.onerror = () => reject(new Error("WebSocket connection failed"));
  });
}

async function runWS(body) {
  ws.set("connecting");
  ws.state.sentAt = performance.now();
  requestCount += 1;
  const request = {id: `r${requestCount}`, lastSeq: 0, cancelSent: false, ended: false};
  wsRequest = request;
  try {
    const sock = await openSocket();
    sock.send(JSON.stringify({type: "request", id: request.id, body}));
    ws.note(`request ${request.id} sent on the socket`);
    ws.set("streaming");
  } catch (e) {
    ws.fail(String(e));
  }
}

function wsMessage(message) {
  const request = wsRequest;
  if (!request || message.id !== request.id) {
    if (message.type === "error") ws.problem(errorText(message, 200));
    return;
  }
  if (request.ended) {
    ws.problem(`${message.type} message after the request ended`);
    return;
  }
  if (message.type === "chunk") {
    if (message.seq !== request.lastSeq + 1) {
      ws.problem(`seq ${message.seq} after ${request.lastSeq}`);
    }
    request.lastSeq = message.seq;
    ws.state.events += 1;
    ws.state.last = message.seq;
    ws.chunk(message.chunk);
  } else if (message.type === "done") {
    request.ended = true;
    ws.state.finish = message.finish_reason;
    ws.note(`done: finish_reason ${message.finish_reason}, ` +
            `${message.usage.completion_tokens} completion tokens`, "good");
    ws.set("done");
  } else if (message.type === "cancelled") {
    request.ended = true;
    ws.note(`server: cancelled after ${request.lastSeq} chunks`);
    ws.set("cancelled");
  } else if (message.type === "error") {
    request.ended = true;
    ws.fail(errorText(message, 200));
  }
  updateButtons();
}

function cancelWS() {
  const request = wsRequest;
  if (!request || request.ended || request.cancelSent) return;
  request.cancelSent = true;
  socket.send(JSON.stringify({type: "cancel", id: request.id}));
  ws.note(`{"type": "cancel", "id": "${request.id}"} sent`);
  ws.set("cancelling");
}

// ------------------------------------------------------------------------------ controls

const $ = (id) => document.getElementById(id);

function updateButtons() {
  $("send").disabled = sse.active || ws.active;
  $("cut").disabled = !(sseRun && !sseRun.ended && sseRun.reader !== null
                        && sse.state.status === "streaming");
  $("cancel").disabled = !(sse.active || ws.active);
}

function requestBody() {
  const body = {model: $("model").value,
                messages: [{role: "user", content: $("prompt").value}]};
  const max = $("max-tokens").value.trim();
  if (max !== "") body.max_tokens = Number(max);
  return body;
}

$("ask").addEventListener("submit", (e) => {
  e.preventDefault();
  const body = requestBody();
  sse.reset();
  ws.reset();
  sseRun = new SSERun(body);
  const started = [sseRun.start(), runWS(body)];
  updateButtons();
  Promise.all(started).then(updateButtons);
});
$("cut").addEventListener("click", () => { if (sseRun) sseRun.cut(); });
$("cancel").addEventListener("click", () => {
  if (sseRun) sseRun.cancel();
  cancelWS();
  updateButtons();
});

fetch("/v1/models").then((r) => r.json()).then((doc) => {
  const select = $("model");
  select.textContent = "";
  for (const model of doc.data) {
    const option = document.createElement("option");
    option.textContent = model.id;
    select.appendChild(option);
  }
}).catch(() => {});

// The stream inspector: GET /v1/streams every second (this process's live streams and the
// ended ones kept for resume); "Stop" is DELETE /v1/streams/{id}.
const inspector = {
  rows: [],
  async refresh() {
    try {
      const response = await fetch("/v1/streams");
      if (!response.ok) return;
      this.rows = (await response.json()).data;
      this.render();
    } catch (e) { /* the server is gone: keep the last table */ }
  },
  render() {
    const body = document.querySelector("#inspector [data-rows]");
    body.textContent = "";
    for (const row of this.rows) {
      const tr = document.createElement("tr");
      tr.dataset.id = row.id;
      const cells = [row.id, row.model, row.transport, row.state, row.age_s.toFixed(1) + " s",
                     row.tokens, row.readers, row.buffered_bytes];
      for (const value of cells) {
        const td = document.createElement("td");
        td.textContent = String(value);
        tr.appendChild(td);
      }
      const td = document.createElement("td");
      if (["running", "paused", "created"].includes(row.state)) {
        const stop = document.createElement("button");
        stop.textContent = "Stop";
        stop.addEventListener("click", () => {
          fetch("/v1/streams/" + encodeURIComponent(row.id), {method: "DELETE"})
            .then(() => this.refresh());
        });
        td.appendChild(stop);
      }
      tr.appendChild(td);
      body.appendChild(tr);
    }
  },
};
inspector.refresh();
setInterval(() => inspector.refresh(), 1000);
