// Shared page behaviour: tooltips, self-refreshing history and end-of-run notifications.
(function () {
  "use strict";
  const shepherd = window.shepherd = window.shepherd || {};
  const LAUNCHED_KEY = "shepherd.launched";
  const POLL_MS = 4000;

  shepherd.tooltips = function (scope) {
    if (!window.bootstrap) return;
    for (const el of (scope || document).querySelectorAll('[data-bs-toggle="tooltip"]')) {
      bootstrap.Tooltip.getOrCreateInstance(el);
    }
  };

  function disposeTooltips(scope) {
    if (!window.bootstrap) return;
    for (const el of scope.querySelectorAll('[data-bs-toggle="tooltip"]')) {
      const tip = bootstrap.Tooltip.getInstance(el);
      if (tip) tip.dispose();
    }
  }

  function toast(text, ok) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const el = document.createElement("div");
    el.className = "toast show align-items-center border-0 " + (ok ? "text-bg-success" : "text-bg-danger");
    el.setAttribute("role", "status");
    el.setAttribute("aria-live", "polite");
    const row = document.createElement("div");
    row.className = "d-flex";
    const body = document.createElement("div");
    body.className = "toast-body";
    body.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "btn-close btn-close-white me-2 m-auto";
    close.setAttribute("aria-label", "Close");
    close.addEventListener("click", function () { el.remove(); });
    row.append(body, close);
    el.append(row);
    box.append(el);
    setTimeout(function () { el.remove(); }, 15000);
  }
  shepherd.toast = toast;

  // Runs launched from this browser, remembered until their end is announced.
  function launched() {
    try { return JSON.parse(localStorage.getItem(LAUNCHED_KEY) || "[]"); } catch (err) { return []; }
  }
  function saveLaunched(ids) {
    try { localStorage.setItem(LAUNCHED_KEY, JSON.stringify(ids)); } catch (err) { /* storage off */ }
  }
  shepherd.rememberLaunch = function (id) {
    const ids = launched();
    if (ids.indexOf(String(id)) < 0) saveLaunched(ids.concat([String(id)]).slice(-20));
  };

  // Announce the end of a run this browser launched, once.
  shepherd.runEnded = function (state) {
    const ids = launched();
    const id = String(state.id);
    if (ids.indexOf(id) < 0) return;
    saveLaunched(ids.filter((x) => x !== id));
    const text = "Run " + id + " (" + state.playbook + " on " + state.target + ") ended: " + state.status +
      (state.reason ? " (" + state.reason + ")" : "");
    const ok = state.status === "successful";
    if ("Notification" in window && Notification.permission === "granted") {
      try { new Notification("Shepherd: run " + state.status, {body: text, tag: "run-" + id}); } catch (err) { /* page context without notifications */ }
    }
    toast(text, ok);
  };

  // Ask for notification permission when the user launches (a user gesture).
  for (const form of document.querySelectorAll("[data-launch-form]")) {
    form.addEventListener("submit", function () {
      if ("Notification" in window && Notification.permission === "default") {
        Notification.requestPermission().catch(function () {});
      }
    });
  }

  // Watch launched runs whose own page is not open.
  const runPage = document.getElementById("run");
  const hereId = runPage ? runPage.dataset.run : null;
  async function pollLaunched() {
    for (const id of launched()) {
      if (id === hereId) continue;
      try {
        const response = await fetch("/api/deployments/" + encodeURIComponent(id), {headers: {Accept: "application/json"}});
        if (response.status === 404) { saveLaunched(launched().filter((x) => x !== id)); continue; }
        if (!response.ok) continue;
        const state = await response.json();
        if (["queued", "running"].indexOf(state.status) < 0) shepherd.runEnded(state);
      } catch (err) { /* offline for a moment: try again later */ }
    }
    if (launched().some((id) => id !== hereId)) setTimeout(pollLaunched, POLL_MS);
  }
  if (launched().some((id) => id !== hereId)) setTimeout(pollLaunched, POLL_MS);

  // History: while runs are active, fetch the table again and swap it in.
  function watchHistory() {
    const box = document.getElementById("history-table");
    if (!box || !box.dataset.refresh) return;
    const every = Number(box.dataset.refresh) * 1000;
    setTimeout(async function refresh() {
      try {
        const response = await fetch(box.dataset.refreshUrl, {headers: {Accept: "text/html"}});
        if (!response.ok) throw new Error("HTTP " + response.status);
        const doc = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = doc.getElementById("history-table");
        if (fresh) {
          disposeTooltips(box);
          box.replaceWith(fresh);
          shepherd.tooltips(fresh);
          watchHistory();
          return;
        }
      } catch (err) { /* keep trying */ }
      setTimeout(refresh, every);
    }, every);
  }

  shepherd.tooltips(document);
  watchHistory();

  // Drop the launched marker from the address so a reload does not repeat it.
  const url = new URL(window.location.href);
  if (url.searchParams.has("launched") && window.history.replaceState) {
    url.searchParams.delete("launched");
    window.history.replaceState(null, "", url);
  }
})();

// Forms with data-confirm ask before they submit (no inline handlers: the CSP forbids them).
document.addEventListener("submit", function (event) {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
});

// An element with data-reload-after="N" reloads its page every N seconds.
(function () {
  const box = document.querySelector("[data-reload-after]");
  if (box) setTimeout(function () { window.location.reload(); }, Number(box.dataset.reloadAfter) * 1000);
})();
