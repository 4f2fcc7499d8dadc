// Shared page behaviour: self-refreshing history and end-of-run notifications.
(function () {
  "use strict";
  window.shepherd = window.shepherd || {};

  function toast(text) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const el = document.createElement("div");
    el.className = "toast show align-items-center text-bg-dark";
    el.setAttribute("role", "status");
    const body = document.createElement("div");
    body.className = "toast-body";
    body.textContent = text;
    el.append(body);
    box.append(el);
    setTimeout(function () { el.remove(); }, 8000);
  }
  window.shepherd.toast = toast;

  window.shepherd.notifyEnded = function (state, launchedHere) {
    const text = "Run " + state.id + " (" + state.playbook + " on " + state.target + ") ended: " + state.status;
    if (launchedHere && "Notification" in window && Notification.permission === "granted") {
      new Notification("Shepherd", {body: text});
    } else {
      toast(text);
    }
  };
  if (document.querySelector("[data-launched='1']") && "Notification" in window && Notification.permission === "default") {
    Notification.requestPermission();
  }

  // History: while runs are active, fetch the page again and swap the table body.
  const table = document.querySelector("table[data-refresh]");
  if (table) {
    const every = Number(table.dataset.refresh) * 1000;
    const refresh = async function () {
      try {
        const response = await fetch(window.location.href, {headers: {"X-Requested-With": "fetch"}});
        const doc = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = doc.querySelector("#history");
        if (fresh) {
          table.querySelector("tbody").replaceWith(fresh.querySelector("tbody"));
          if (!fresh.dataset.refresh) return;
        }
      } catch (err) { /* keep trying */ }
      setTimeout(refresh, every);
    };
    setTimeout(refresh, every);
  }
})();
