// Dashboard: draws the charts from /api/stats and refreshes figures, alerts and charts.
(function () {
  "use strict";
  const root = document.getElementById("dashboard");
  if (!root || !window.Chart) return;
  const COLOURS = {
    queued: "#0dcaf0", running: "#ffc107", successful: "#198754", failed: "#dc3545",
    timeout: "#6f42c1", canceled: "#6c757d", abandoned: "#8b4513",
  };
  const FAMILY_COLOURS = {Linux: "#343a40", Debian: "#a80030", RedHat: "#ee0000", Windows: "#0078d4", Unknown: "#adb5bd"};
  const charts = {};

  function formatSeconds(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 60) return seconds.toFixed(1) + " s";
    if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }

  function statusDatasets(series) {
    return Object.entries(series.statuses).map(([status, counts]) => ({
      label: status, data: counts, backgroundColor: COLOURS[status] || "#999", stack: "runs",
    }));
  }

  function stackedBar(id, series, shortLabel) {
    const config = {
      type: "bar",
      data: {labels: series.labels.map(shortLabel), datasets: statusDatasets(series)},
      options: {
        animation: false, maintainAspectRatio: false, responsive: true,
        scales: {x: {stacked: true, ticks: {autoSkip: true, maxRotation: 0}}, y: {stacked: true, beginAtZero: true, ticks: {precision: 0}}},
        plugins: {legend: {position: "bottom", labels: {boxWidth: 12}}},
      },
    };
    return draw(id, config);
  }

  function draw(id, config) {
    const canvas = document.getElementById(id);
    if (charts[id]) {
      charts[id].data = config.data;
      charts[id].update();
    } else {
      charts[id] = new Chart(canvas, config);
    }
    return charts[id];
  }

  function durationChart(rows) {
    draw("chart-duration", {
      type: "bar",
      data: {
        labels: rows.map((r) => r.playbook),
        datasets: [
          {label: "p50", data: rows.map((r) => r.p50), backgroundColor: "#0d6efd"},
          {label: "p95", data: rows.map((r) => r.p95), backgroundColor: "#fd7e14"},
        ],
      },
      options: {
        animation: false, maintainAspectRatio: false, responsive: true, indexAxis: "y",
        scales: {x: {beginAtZero: true, title: {display: true, text: "seconds"}}},
        plugins: {legend: {position: "bottom", labels: {boxWidth: 12}},
          tooltip: {callbacks: {label: (ctx) => ctx.dataset.label + ": " + formatSeconds(ctx.parsed.x)}}},
      },
    });
    const tbody = document.querySelector("#duration-table tbody");
    tbody.replaceChildren(...rows.map(function (r) {
      const tr = document.createElement("tr");
      const name = document.createElement("th");
      name.scope = "row";
      name.textContent = r.playbook;
      tr.append(name);
      for (const value of [String(r.runs), formatSeconds(r.p50), formatSeconds(r.p95)]) {
        const td = document.createElement("td");
        td.textContent = value;
        tr.append(td);
      }
      return tr;
    }));
  }

  function familyChart(families) {
    const names = Object.keys(families);
    draw("chart-os", {
      type: "doughnut",
      data: {
        labels: names,
        datasets: [{data: names.map((n) => families[n]), backgroundColor: names.map((n) => FAMILY_COLOURS[n] || "#6c757d")}],
      },
      options: {animation: false, maintainAspectRatio: false, responsive: true, plugins: {legend: {position: "bottom", labels: {boxWidth: 12}}}},
    });
  }

  function showSummary(summary) {
    for (const el of root.querySelectorAll("[data-count]")) {
      const key = el.dataset.count;
      const value = summary[key];
      if (key === "sweep_age" && value === null && !summary.redis_error) el.textContent = "never";
      else if (value === null || value === undefined) el.textContent = "?";
      else if (key === "sweep_age") el.textContent = Math.round(value) + " s ago";
      else el.textContent = value;
    }
    for (const [key, bad] of [["stuck", summary.stuck > 0], ["workers", summary.workers === 0],
      ["sweep_age", summary.scheduler_alive === false], ["failures_last_hour", summary.failures_last_hour >= summary.failure_threshold]]) {
      const card = root.querySelector('[data-card="' + key + '"]');
      if (card) card.classList.toggle("border-danger", bad);
    }
    const box = document.getElementById("alerts");
    box.replaceChildren(...summary.alerts.map(function (alert) {
      const div = document.createElement("div");
      div.className = "alert alert-" + alert.level + " d-flex gap-2 align-items-start py-2";
      div.setAttribute("role", "alert");
      div.dataset.alert = alert.code;
      const icon = document.createElement("i");
      icon.className = "bi bi-exclamation-triangle-fill";
      icon.setAttribute("aria-hidden", "true");
      const text = document.createElement("div");
      text.textContent = alert.text;
      div.append(icon, text);
      return div;
    }));
  }

  function showRates(rates) {
    for (const el of root.querySelectorAll("[data-rate]")) {
      const rate = rates[el.dataset.rate];
      el.textContent = rate === null || rate === undefined ? "no ended runs" : "success rate " + (rate * 100).toFixed(1) + " %";
    }
  }

  async function load() {
    try {
      const response = await fetch(root.dataset.statsUrl, {headers: {Accept: "application/json"}});
      if (!response.ok) throw new Error("HTTP " + response.status);
      const stats = await response.json();
      stackedBar("chart-hour", stats.per_hour, (label) => label.slice(11, 16));
      stackedBar("chart-day", stats.per_day, (label) => label.slice(5));
      durationChart(stats.durations);
      familyChart(stats.os_families);
      showSummary(stats.summary);
      showRates(stats.success_rate);
      root.dataset.loaded = "1";
    } catch (err) {
      root.dataset.loaded = "error";
    }
    setTimeout(load, Number(root.dataset.refresh || 10) * 1000);
  }
  load();
})();
