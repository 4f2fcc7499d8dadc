// Live view of one run: output, status and progress from the run's event stream.
(function () {
  "use strict";
  const root = document.getElementById("run");
  if (!root) return;
  const output = document.getElementById("output");
  const statusBox = document.getElementById("run-status");
  const maxChars = Number(output.dataset.maxChars) || 524288;
  const runId = root.dataset.run;
  let shownChars = output.textContent.length;

  if (root.dataset.launched === "1") window.shepherd.rememberLaunch(runId);
  output.scrollTop = output.scrollHeight;

  function formatTime(iso) {
    if (!iso) return "–";
    return iso.replace("T", " ").replace(/\.\d+/, "").replace(/\+00:00$/, "") + " UTC";
  }

  function setField(name, value) {
    const cell = root.querySelector('[data-field="' + name + '"]');
    if (cell) cell.textContent = value === null || value === undefined || value === "" ? "–" : value;
  }

  function cell(tag, text) {
    const el = document.createElement(tag);
    el.textContent = text === undefined || text === null ? 0 : text;
    if (tag === "th") el.scope = "row";
    return el;
  }

  function showProgress(state) {
    const p = state.progress || {};
    const started = p.tasks_started || 0;
    const done = state.status === "running" && started > 0 ? started - 1 : started;
    for (const [key, value] of [["play", p.play], ["task", p.task], ["tasks_done", done]]) {
      const el = root.querySelector('[data-progress="' + key + '"]');
      if (el) el.textContent = value === null || value === undefined ? "–" : value;
    }
    const rows = state.stats
      ? Object.entries(state.stats).map(([h, s]) => [h, s.ok, s.changed, s.failures, s.dark, s.skipped])
      : Object.entries(p.hosts || {}).map(([h, s]) => [h, s.ok, s.changed, s.failed, s.unreachable, s.skipped]);
    const tbody = document.querySelector("#stats tbody");
    tbody.replaceChildren(...rows.map(function (row) {
      const tr = document.createElement("tr");
      tr.append(cell("th", row[0]), ...row.slice(1).map((v) => cell("td", v)));
      return tr;
    }));
  }

  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 60) return seconds.toFixed(1) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.floor(seconds % 60) + " s";
    return (seconds / 3600).toFixed(1) + " h";
  }

  function update(state) {
    // The badge is rendered and escaped by the server's own template macro.
    statusBox.innerHTML = state.badge;
    window.shepherd.tooltips(statusBox);
    setField("reason", state.reason);
    setField("worker_name", state.worker_name);
    setField("hostname", state.hostname);
    setField("rc", state.rc);
    setField("duration", formatDuration(state.duration));
    for (const name of ["started_at", "finished_at", "heartbeat_at"]) setField(name, formatTime(state[name]));
    setField("queue_reason", state.queue_reason ? state.queue_reason.message : "");
    if (state.retry) setField("retry", state.retry.label + (state.retry.note ? " · " + state.retry.note : ""));
    showProgress(state);
    const ended = ["queued", "running"].indexOf(state.status) < 0;
    if (ended) {
      const cancel = document.getElementById("cancel-form");
      if (cancel) cancel.remove();
      // The RQ state shown while the run was active is out of date now.
      for (const stale of document.querySelectorAll("[data-rq-state], [data-rq-warning]")) stale.remove();
      window.shepherd.runEnded(state);
    }
  }

  function trimOutput() {
    // Keep the page light for huge outputs: drop the oldest pieces.
    let trimmed = false;
    while (shownChars > maxChars && output.firstChild) {
      shownChars -= output.firstChild.textContent.length;
      output.firstChild.remove();
      trimmed = true;
    }
    if (trimmed && !document.getElementById("output-truncated")) {
      const note = document.createElement("div");
      note.className = "alert alert-info py-2 small";
      note.id = "output-truncated";
      note.setAttribute("role", "status");
      const link = document.createElement("a");
      link.href = document.getElementById("download-link").href;
      link.textContent = "Download the whole output";
      note.append("The output is long: only its newest part is shown here. ", link, ".");
      output.before(note);
    }
  }

  function append(html) {
    const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 30;
    const piece = document.createElement("span");
    // HTML from the server's ANSI renderer, which escapes all text first.
    piece.innerHTML = html;
    output.append(piece);
    shownChars += piece.textContent.length;
    trimOutput();
    if (atBottom) output.scrollTop = output.scrollHeight;
  }

  const url = new URL(root.dataset.events, window.location.href);
  url.searchParams.set("after", root.dataset.after || "0");
  const source = new EventSource(url);
  root.dataset.stream = "open";
  source.addEventListener("output", function (event) { append(JSON.parse(event.data).html); });
  source.addEventListener("status", function (event) { update(JSON.parse(event.data)); });
  source.addEventListener("end", function () {
    source.close();
    root.dataset.active = "0";
    root.dataset.stream = "closed";
  });
})();
