// Live view of one run: output and status from the run's event stream.
(function () {
  "use strict";
  const root = document.getElementById("run");
  if (!root) return;
  const output = document.getElementById("output");
  const statusBox = document.getElementById("run-status");
  const icons = {successful: "check-circle-fill", failed: "x-circle-fill", timeout: "hourglass-bottom",
    canceled: "slash-circle", abandoned: "heartbreak-fill", running: "arrow-repeat", queued: "clock"};
  let lastStatus = null;

  function badge(state) {
    const span = document.createElement("span");
    const health = state.health || {};
    const status = health.stuck ? "stuck" : state.status;
    span.className = "badge status status-" + status;
    span.dataset.status = status;
    if (state.reason) span.title = state.reason;
    const icon = document.createElement("i");
    icon.className = "bi bi-" + (health.stuck ? "exclamation-triangle-fill" : (icons[status] || "question"));
    span.append(icon, " " + status + (health.stuck && health.note ? " · " + health.note : ""));
    return span;
  }

  function setField(name, value) {
    const cell = root.querySelector('[data-field="' + name + '"]');
    if (cell && value !== null && value !== undefined) cell.textContent = value;
  }

  function showProgress(state) {
    const box = document.getElementById("progress");
    const p = state.progress;
    if (!box || !p) return;
    box.textContent = "";
    for (const line of ["Play: " + (p.play || ""), "Task: " + (p.task || ""), "Tasks started: " + p.tasks_started]) {
      box.append(line, document.createElement("br"));
    }
    const tbody = document.querySelector("#stats tbody");
    const hosts = state.stats ? Object.entries(state.stats).map(([h, s]) => [h, s.ok, s.changed, s.failures, s.dark, s.skipped])
      : Object.entries(p.hosts || {}).map(([h, s]) => [h, s.ok, s.changed, s.failed, s.unreachable, s.skipped]);
    tbody.textContent = "";
    for (const row of hosts) {
      const tr = document.createElement("tr");
      for (const value of row) { const td = document.createElement("td"); td.textContent = value; tr.append(td); }
      tbody.append(tr);
    }
  }

  function update(state) {
    statusBox.replaceChildren(badge(state));
    for (const name of ["reason", "worker_name", "hostname", "rc", "started_at", "finished_at", "heartbeat_at"]) setField(name, state[name]);
    if (state.retry) setField("retry", state.retry.label + (state.retry.note ? " · " + state.retry.note : ""));
    showProgress(state);
    if (lastStatus && lastStatus !== state.status && ["queued", "running"].indexOf(state.status) < 0) {
      window.shepherd.notifyEnded(state, root.dataset.launched === "1");
      const cancel = document.getElementById("cancel-button");
      if (cancel) cancel.closest("form").remove();
    }
    lastStatus = state.status;
  }

  const url = new URL(root.dataset.events, window.location.href);
  url.searchParams.set("after", root.dataset.after || "0");
  const source = new EventSource(url);
  source.addEventListener("output", function (event) {
    const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 20;
    output.insertAdjacentHTML("beforeend", JSON.parse(event.data).html);
    if (atBottom) output.scrollTop = output.scrollHeight;
  });
  source.addEventListener("status", function (event) { update(JSON.parse(event.data)); });
  source.addEventListener("end", function () { source.close(); root.dataset.active = "0"; });
})();
