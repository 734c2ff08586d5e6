// Live refresh and filters of the admin dashboard. The server renders every fragment; this script
// only fetches them again, keeps the filters in the URL and pauses while the tab is hidden.
"use strict";

(function () {
  const SUMMARY_EVERY_MS = 15000;

  function hidden() {
    return document.visibilityState === "hidden";
  }

  function every(seconds, run) {
    // Calls run() every `seconds`, never overlapping, skipping while the tab is hidden;
    // returns a function that restarts it with a new interval.
    let timer = null;
    let interval = seconds;
    async function tick() {
      timer = null;
      if (!hidden()) await run();
      plan();
    }
    function plan() {
      clearTimeout(timer);
      timer = interval > 0 && !hidden() ? setTimeout(tick, interval * 1000) : null;
    }
    document.addEventListener("visibilitychange", () => {
      if (hidden()) {
        clearTimeout(timer);
        run.paused && run.paused();
      } else if (interval > 0) {
        clearTimeout(timer);
        tick();
      }
    });
    plan();
    return (next) => {
      interval = next;
      plan();
    };
  }

  function dashboard(root) {
    const api = root.dataset.api;
    const form = document.getElementById("filters");
    const state = document.getElementById("live-state");
    const updated = document.getElementById("updated-at");
    let seconds = Number(root.dataset.refresh) || 0;
    let summaryAt = Date.now();
    let generation = 0;

    function label(text) {
      state.textContent = text;
    }
    function liveLabel() {
      // A refresh that was under way when the tab was hidden ends after the pause began.
      if (hidden()) label("Paused while the tab is hidden");
      else label(seconds > 0 ? `Live · every ${seconds} s` : "Live refresh off");
    }

    function swap(fragments) {
      for (const [name, html] of Object.entries(fragments)) {
        const target = root.querySelector(`[data-fragment="${name}"]`);
        if (target) target.innerHTML = html;
      }
    }

    async function fetchJSON(path) {
      const response = await fetch(api + path, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.status === 401) {
        const next = location.pathname + location.search;
        location.assign(`${root.dataset.login}?next=${encodeURIComponent(next)}`);
        throw new Error("logged out");
      }
      const body = await response.json();
      if (!response.ok) throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
      return body;
    }

    async function refresh() {
      const mine = ++generation;
      try {
        const body = await fetchJSON("/overview" + location.search);
        if (mine !== generation) return; // a newer request (filters changed) owns the page
        swap(body.html);
        updated.textContent = body.generated_at.replace("T", " ").slice(0, 19);
        liveLabel();
        if (Date.now() - summaryAt >= Math.max(SUMMARY_EVERY_MS, seconds * 1000)) {
          summaryAt = Date.now();
          swap((await fetchJSON("/summary")).html);
        }
      } catch (error) {
        label(`Refresh failed (${error.message}); retrying`);
      }
    }
    refresh.paused = liveLabel;

    const restart = every(seconds, refresh);

    function syncForm() {
      const params = new URLSearchParams(location.search);
      for (const element of form.elements) {
        if (!element.name) continue;
        const value = params.get(element.name);
        if (element.name === "refresh") {
          if (value !== null && ![...element.options].some((o) => o.value === value)) {
            element.add(new Option(`every ${value} s`, value));
          }
          element.value = value === null ? String(Number(root.dataset.refresh) || 0) : value;
        } else {
          element.value = value === null ? "" : value;
        }
      }
      const wanted = params.get("refresh");
      seconds = wanted === null ? Number(root.dataset.refresh) || 0 : Number(wanted) || 0;
      restart(seconds);
      liveLabel();
    }

    function navigate(search, replace) {
      const url = location.pathname + search;
      if (replace) history.replaceState(null, "", url);
      else history.pushState(null, "", url);
      syncForm();
      refresh();
    }

    function applyForm() {
      const params = new URLSearchParams();
      for (const [name, value] of new FormData(form)) {
        if (value !== "") params.set(name, value);
      }
      const query = params.toString();
      navigate(query ? `?${query}` : "");
    }

    root.addEventListener("click", (event) => {
      const link = event.target.closest("a[data-nav]");
      if (!link || event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      navigate(new URL(link.href).search);
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      applyForm();
    });
    form.addEventListener("change", (event) => {
      if (event.target.type !== "search") applyForm();
    });
    let typing = null;
    form.q.addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(applyForm, 400);
    });
    window.addEventListener("popstate", () => {
      syncForm();
      refresh();
    });
    liveLabel();
  }

  function jobPage(root) {
    // An unfinished job's page listens to the job's server-sent events (no polling): each step updates
    // the progress line in place, a change of status reloads the page, which the server renders. A
    // finished job's page never changes.
    if (["succeeded", "failed", "canceled"].includes(root.dataset.status)) return;
    const source = new EventSource(root.dataset.events);
    source.addEventListener("progress", (event) => {
      const progress = JSON.parse(event.data);
      const line = document.getElementById("job-progress");
      if (line) {
        line.textContent =
          `step ${progress.step}/${progress.total} · ${progress.computed_calls} computed, ` +
          `${progress.skipped_calls} reused`;
      }
    });
    for (const name of ["status", "succeeded", "failed", "canceled"]) {
      source.addEventListener(name, (event) => {
        if (JSON.parse(event.data).status === root.dataset.status) return;
        source.close();
        location.reload();
      });
    }
  }

  const board = document.getElementById("dashboard");
  if (board) dashboard(board);
  const job = document.getElementById("job");
  if (job) jobPage(job);
})();
