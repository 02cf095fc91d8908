// The web console's script (src/http/console.rs serves it; docs/operations.md,
// "Web console"): signs in with an admin API token kept in sessionStorage
// only, reads the admin API every few seconds and renders the pages; builds
// every element with textContent (never as HTML), so names that clients
// send cannot inject markup. The server enforces roles; hiding buttons a
// role may not use is only a courtesy.
"use strict";
(function () {
  const TOKEN_KEY = "floatlm.console.token";
  const POLL_MS = 3000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const RANK = { monitor: 0, operator: 1, admin: 2 };
  const PAGES = ["features", "leases", "instances", "usage", "identities"];
  // Pages that read the admin API again every POLL_MS; Usage does not (a
  // report reads every usage record of its range): it reads on demand.
  const LIVE = ["features", "leases", "instances", "identities"];

  let role = null;
  let timer = null;
  let busy = false;
  let leaseRows = [];

  const $ = (id) => document.getElementById(id);
  const can = (r) => role !== null && RANK[role] >= RANK[r];

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function ago(iso) {
    if (!iso) return "—";
    const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    return s < 120 ? s + " s ago" : Math.round(s / 60) + " min ago";
  }

  function showError(text) {
    const box = $("error");
    box.textContent = text || "";
    box.hidden = !text;
  }

  class ApiFailure extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // Every call: same origin, the token as a bearer token in a header (never
  // in the URL), no cookies, no caching of answers.
  async function api(method, path, body) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new ApiFailure(401, "not signed in");
    const opts = {
      method,
      headers: { Authorization: "Bearer " + token },
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
    };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, opts);
    } catch (e) {
      throw new ApiFailure(0, "the admin listener did not answer (" + e.message + ")");
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (_) {
      data = null;
    }
    if (!resp.ok) {
      const msg = (data && data.message) || "HTTP " + resp.status;
      throw new ApiFailure(resp.status, msg);
    }
    return data;
  }

  // ---- sign in / out -------------------------------------------------------

  async function signIn(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    try {
      const status = await api("GET", "/admin/v1/status");
      role = status.role;
      $("who-role").textContent = role;
      $("who-instance").textContent = "instance " + status.instance + " · v" + status.version;
      $("signin").hidden = true;
      $("nav").hidden = false;
      $("who").hidden = false;
      $("signin-error").hidden = true;
      for (const a of document.querySelectorAll("nav a[data-role]")) {
        a.hidden = !can(a.getAttribute("data-role"));
      }
      document.body.setAttribute("data-role", role);
      route();
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      role = null;
      const box = $("signin-error");
      box.textContent = e.status === 401 ? "That token was refused: " + e.message : e.message;
      box.hidden = false;
      showSignIn();
    }
  }

  function showSignIn() {
    stopPolling();
    $("signin").hidden = false;
    $("nav").hidden = true;
    $("who").hidden = true;
    for (const p of document.querySelectorAll("section.page")) p.hidden = true;
    $("token").value = "";
    $("token").focus();
  }

  function signOut(reason) {
    sessionStorage.removeItem(TOKEN_KEY);
    role = null;
    document.body.removeAttribute("data-role");
    showError("");
    if (reason) {
      $("signin-error").textContent = reason;
      $("signin-error").hidden = false;
    }
    showSignIn();
  }

  // ---- pages and polling ---------------------------------------------------

  function currentPage() {
    const p = location.hash.replace(/^#/, "");
    if (PAGES.includes(p) && (p !== "identities" || can("admin"))) return p;
    return "features";
  }

  function route() {
    if (role === null) return;
    const page = currentPage();
    for (const p of PAGES) $("page-" + p).hidden = p !== page;
    for (const a of document.querySelectorAll("nav a")) {
      a.classList.toggle("active", a.getAttribute("data-page") === page);
    }
    document.body.setAttribute("data-page", page);
    stopPolling();
    refresh();
  }

  function stopPolling() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  async function refresh() {
    stopPolling();
    if (role === null) return;
    const page = currentPage();
    if (!busy) {
      busy = true;
      try {
        await RENDER[page]();
        showError("");
        $("updated").textContent = "Updated " + new Date().toLocaleTimeString() +
          (LIVE.includes(page) ? "; refreshes every " + POLL_MS / 1000 + " s" : "");
        document.body.setAttribute("data-loaded", page);
      } catch (e) {
        if (e.status === 401) {
          signOut("Signed out: " + e.message);
          return;
        }
        showError(e.message);
      } finally {
        busy = false;
      }
    }
    if (role !== null && LIVE.includes(page)) timer = setTimeout(refresh, POLL_MS);
  }

  function confirmThen(text, action) {
    const dlg = $("confirm");
    $("confirm-text").textContent = text;
    dlg.returnValue = "";
    dlg.onclose = async () => {
      dlg.onclose = null;
      if (dlg.returnValue !== "ok") return;
      try {
        await action();
        showError("");
      } catch (e) {
        showError(e.message);
      }
      refresh();
    };
    dlg.showModal();
  }

  // Replaces a table's rows only when what they show changed, so that a
  // refresh does not swap a button out from under the pointer.
  const rendered = {};
  function fill(tbodyId, data, rows) {
    const key = JSON.stringify([role, data]);
    if (rendered[tbodyId] === key) return;
    rendered[tbodyId] = key;
    $(tbodyId).replaceChildren(...rows());
  }

  function emptyRow(cols, text) {
    return el("tr", {}, el("td", { class: "empty", colSpan: cols }, text));
  }

  function stateBadge(s, label) {
    return el("span", { class: "state state-" + s }, label || s);
  }

  // ---- Features ------------------------------------------------------------

  function seatBar(used, total) {
    const w = 240, h = 18;
    const frac = total > 0 ? Math.min(1, used / total) : 0;
    const s = svg("svg", { class: "bar", width: w, height: h, viewBox: "0 0 " + w + " " + h, role: "img" });
    const title = svg("title");
    title.textContent = used + " of " + total + " seats in use";
    s.append(title);
    s.append(svg("rect", { class: "track", x: 0, y: 2, width: w, height: h - 4, rx: 3 }));
    const bar = svg("rect", { class: "used" + (used >= total && total > 0 ? " full" : ""), x: 0, y: 2, width: Math.round(w * frac), height: h - 4, rx: 3 });
    s.append(bar);
    return s;
  }

  async function renderFeatures() {
    const [f, l] = await Promise.all([api("GET", "/admin/v1/features"), api("GET", "/admin/v1/licenses")]);
    const byFeature = {};
    for (const lic of l.licenses) {
      for (const feat of lic.features || []) {
        (byFeature[feat.name] = byFeature[feat.name] || []).push({ id: lic.license_id, expires: feat.expires });
      }
    }
    let total = 0, used = 0;
    const rows = f.features.map((x) => {
      total += x.total;
      used += x.used;
      const lics = byFeature[x.name] || [];
      const expiries = lics.map((e) => (e.expires ? when(e.expires) : "never"));
      return el("tr", { "data-feature": x.name },
        el("td", {}, x.name, x.refused ? " " : null, x.refused ? stateBadge("refused") : null),
        el("td", {}, seatBar(x.used, x.total)),
        el("td", { class: "num total" }, x.total),
        el("td", { class: "num used" }, x.used),
        el("td", { class: "num free" }, x.free),
        el("td", {}, lics.map((e) => e.id).join(", ") || "—"),
        el("td", {}, expiries.join(", ") || "—"));
    });
    $("features-rows").replaceChildren(...(rows.length ? rows : [emptyRow(7, "No features: apply a license (floatlm admin license apply FILE).")]));
    const card = (value, label) => el("div", { class: "card" }, el("div", { class: "value" }, value), el("div", { class: "label" }, label));
    $("features-summary").replaceChildren(
      card(f.features.length, "features"),
      card(used + " / " + total, "seats in use"),
      card(f.features.filter((x) => x.total > 0 && x.free === 0).length, "features with no free seat"));
    const lrows = l.licenses.map((x) => el("tr", {},
      el("td", { class: "mono" }, x.license_id),
      el("td", { class: "num" }, x.serial),
      el("td", {}, x.customer || ""),
      el("td", {}, (x.features || []).map((ft) => ft.name + " (" + ft.seats + ")").join(", ")),
      el("td", {}, when(x.applied_at)),
      el("td", {}, stateBadge(x.status === "ok" ? "ok" : "refused"), x.status === "ok" ? null : " " + x.status)));
    $("licenses-rows").replaceChildren(...(lrows.length ? lrows : [emptyRow(6, "No license applied.")]));
  }

  // ---- Leases --------------------------------------------------------------

  function leaseState(x) {
    if (x.revoked) return "revoked";
    if (x.retiring) return "retiring";
    return "held";
  }

  function drawLeases() {
    const feature = $("filter-feature").value;
    const text = $("filter-text").value.trim().toLowerCase();
    const shown = leaseRows.filter((x) =>
      (!feature || x.feature === feature) &&
      (!text || [x.holder, x.client_info, x.granted_by, x.lease].some((v) => String(v || "").toLowerCase().includes(text))));
    const rows = shown.map((x) => {
      let action = null;
      if (can("operator") && !x.revoked) {
        action = el("button", { type: "button", class: "danger release", "data-lease": x.lease }, "Force release");
        action.addEventListener("click", () =>
          confirmThen("Force-release lease " + x.lease + " of " + x.feature + " held by " + (x.client_info || x.holder) +
            "? Its holder loses the seat on its next heartbeat; the seat is free once the promise already given runs out.",
          () => api("DELETE", "/admin/v1/leases/" + encodeURIComponent(x.lease))));
      }
      return el("tr", { "data-lease": x.lease, "data-state": leaseState(x) },
        el("td", {}, x.feature),
        el("td", { class: "mono" }, x.lease),
        el("td", {}, x.holder),
        el("td", {}, x.client_info),
        el("td", { class: "mono" }, x.granted_by),
        el("td", {}, when(x.granted_at)),
        el("td", {}, when(x.expires_at)),
        el("td", {}, stateBadge(leaseState(x), x.revoked ? "force-released" : null)),
        el("td", { class: "actions" }, action));
    });
    fill("leases-rows", [shown, leaseRows.length], () =>
      rows.length ? rows : [emptyRow(9, leaseRows.length ? "No lease matches the filter." : "No live leases.")]);
    $("leases-count").textContent = shown.length + " of " + leaseRows.length + " live leases";
  }

  async function renderLeases() {
    const [l, f] = await Promise.all([api("GET", "/admin/v1/leases"), api("GET", "/admin/v1/features")]);
    leaseRows = l.leases;
    const sel = $("filter-feature");
    const keep = sel.value;
    const names = f.features.map((x) => x.name);
    fill("filter-feature", names, () => [el("option", { value: "" }, "all"), ...names.map((n) => el("option", { value: n }, n))]);
    sel.value = names.includes(keep) ? keep : "";
    drawLeases();
  }

  // ---- Instances -----------------------------------------------------------

  async function renderInstances() {
    const [c, s] = await Promise.all([api("GET", "/admin/v1/cluster"), api("GET", "/admin/v1/status")]);
    $("instances-self").textContent = "This page is served by " + s.instance + " (" + s.backend + ", " +
      (s.healthy ? "healthy" : "unhealthy: " + s.reason) + (s.draining ? ", draining" : "") + "): " +
      s.sessions.active + " active client sessions, " + s.sessions.handshakes + " handshakes since start.";
    const rows = c.instances.map((x) => {
      const state = x.state === "up" && x.drain_requested ? "draining" : x.state;
      const actions = el("td", { class: "actions" });
      if (can("operator") && x.state === "up" && !x.drain_requested) {
        const b = el("button", { type: "button", class: "secondary drain", "data-instance": x.id }, "Drain");
        b.addEventListener("click", () => confirmThen("Drain instance " + x.id + "? Its healthz answers 503 within one cluster heartbeat, so load balancers stop sending new clients; it keeps serving until it is stopped.",
          () => api("POST", "/admin/v1/cluster/" + encodeURIComponent(x.id) + "/drain")));
        actions.append(b);
      }
      if (can("admin") && x.state === "down") {
        const b = el("button", { type: "button", class: "danger remove", "data-instance": x.id }, "Remove");
        b.addEventListener("click", () => confirmThen("Forget the down instance " + x.id + "?",
          () => api("DELETE", "/admin/v1/cluster/" + encodeURIComponent(x.id))));
        actions.append(b);
      }
      return el("tr", { "data-instance": x.id, "data-state": state },
        el("td", { class: "mono" }, x.id, x.id === s.instance ? " (this one)" : null),
        el("td", {}, stateBadge(state)),
        el("td", { class: "mono" }, x.address),
        el("td", { class: "mono" }, x.admin_address),
        el("td", {}, x.version),
        el("td", {}, when(x.started_at)),
        el("td", {}, ago(x.last_seen)),
        el("td", { class: "num" }, x.leases),
        actions);
    });
    fill("instances-rows", [c.instances, s.instance], () => (rows.length ? rows : [emptyRow(9, "No instance has registered yet.")]));
  }

  // ---- Usage ---------------------------------------------------------------

  const USAGE_METRICS = [
    { field: "checkouts", label: "Checkouts", fmt: (v) => String(v) },
    { field: "seat_hours", label: "Seat-hours", fmt: (v) => v.toFixed(2) },
    { field: "peak_concurrency", label: "Peak concurrency", fmt: (v) => String(v) },
    { field: "denials", label: "Denials", fmt: (v) => String(v) },
  ];

  // A date input's value (YYYY-MM-DD) for `days` from today, in UTC: the
  // report's dates are midnight UTC.
  function utcDate(days) {
    const d = new Date();
    d.setUTCDate(d.getUTCDate() + days);
    return d.toISOString().slice(0, 10);
  }

  // The default range is the last 7 days, today included (`to` is exclusive).
  function usageDefaults() {
    if (!$("usage-from").value) $("usage-from").value = utcDate(-6);
    if (!$("usage-to").value) $("usage-to").value = utcDate(1);
  }

  function usageQuery(format) {
    usageDefaults();
    const q = new URLSearchParams({
      from: $("usage-from").value,
      to: $("usage-to").value,
      by: $("usage-by").value,
      format,
    });
    return "/admin/v1/usage/report?" + q.toString();
  }

  // One horizontal bar chart of `metric` per group, drawn as inline SVG.
  function usageChart(lines, metric) {
    const rowH = 22, labelW = 170, barW = 260, valueW = 70, top = 6;
    const w = labelW + barW + valueW;
    const h = top * 2 + Math.max(1, lines.length) * rowH;
    const max = Math.max(0, ...lines.map((l) => l[metric.field]));
    const s = svg("svg", { class: "chart", width: w, height: h, viewBox: "0 0 " + w + " " + h, role: "img", "data-metric": metric.field });
    const title = svg("title");
    title.textContent = metric.label + " per group";
    s.append(title);
    lines.forEach((l, i) => {
      const y = top + i * rowH;
      const v = l[metric.field];
      const label = svg("text", { class: "label", x: labelW - 8, y: y + rowH / 2 + 4, "text-anchor": "end" });
      const key = l.key || "(unknown)";
      label.textContent = key.length > 24 ? key.slice(0, 23) + "…" : key;
      s.append(label);
      s.append(svg("rect", { class: "track", x: labelW, y: y + 4, width: barW, height: rowH - 8, rx: 3 }));
      const bar = svg("rect", {
        class: "value " + metric.field, x: labelW, y: y + 4, rx: 3, height: rowH - 8,
        width: max > 0 ? Math.max(v > 0 ? 2 : 0, Math.round((barW * v) / max)) : 0,
        "data-key": l.key,
      });
      const tip = svg("title");
      tip.textContent = key + ": " + metric.fmt(v) + " " + metric.label.toLowerCase();
      bar.append(tip);
      s.append(bar);
      const num = svg("text", { class: "num", x: labelW + barW + 6, y: y + rowH / 2 + 4 });
      num.textContent = metric.fmt(v);
      s.append(num);
    });
    return el("figure", { class: "chart" }, el("figcaption", {}, metric.label), s);
  }

  async function renderUsage() {
    const r = await api("GET", usageQuery("json"));
    const by = r.by || $("usage-by").value;
    const lines = (r.lines || []).slice();
    $("usage-key-head").textContent = by.charAt(0).toUpperCase() + by.slice(1);
    $("usage-range").textContent = "From " + when(r.from) + " (inclusive) to " + when(r.to) + " (exclusive), per " + by + ": " +
      lines.length + (lines.length === 1 ? " group." : " groups.");
    fill("usage-rows", [by, lines], () =>
      lines.length
        ? lines.map((l) => el("tr", { "data-key": l.key },
          el("td", {}, l.key || "(unknown)"),
          el("td", { class: "num checkouts" }, l.checkouts),
          el("td", { class: "num seat-hours" }, l.seat_hours.toFixed(2)),
          el("td", { class: "num peak" }, l.peak_concurrency),
          el("td", { class: "num denials" }, l.denials)))
        : [emptyRow(5, "No usage in this range.")]);
    fill("usage-charts", [by, lines], () => (lines.length ? USAGE_METRICS.map((m) => usageChart(lines, m)) : []));
  }

  // The same report as CSV, fetched with the bearer header (never a token in
  // a URL) and saved through a Blob URL that lives only as long as needed.
  async function downloadUsageCsv() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return signOut("");
    const path = usageQuery("csv");
    let resp;
    try {
      resp = await fetch(path, {
        headers: { Authorization: "Bearer " + token },
        cache: "no-store",
        credentials: "omit",
        redirect: "error",
      });
    } catch (e) {
      return showError("the admin listener did not answer (" + e.message + ")");
    }
    if (!resp.ok) {
      let msg = "HTTP " + resp.status;
      try {
        msg = (await resp.json()).message || msg;
      } catch (_) {
        // not JSON: keep the status
      }
      if (resp.status === 401) return signOut("Signed out: " + msg);
      return showError("CSV download: " + msg);
    }
    const blob = new Blob([await resp.text()], { type: "text/csv" });
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: "floatlm-usage-" + $("usage-by").value + "-" + $("usage-from").value + "-" + $("usage-to").value + ".csv" });
    document.body.append(a);
    a.click();
    a.remove();
    showError("");
    // Revoked a little later: revoking at once can cancel the download.
    setTimeout(() => URL.revokeObjectURL(url), 30000);
  }

  // ---- Identities and tokens -----------------------------------------------

  async function renderIdentities() {
    const [i, t] = await Promise.all([api("GET", "/admin/v1/identities"), api("GET", "/admin/v1/tokens")]);
    const irows = i.identities.map((x) => {
      let action = null;
      if (!x.revoked_at) {
        action = el("button", { type: "button", class: "danger revoke-identity", "data-identity": x.id }, "Revoke");
        action.addEventListener("click", () => confirmThen("Revoke identity " + x.name + " (" + x.id + ")? Its sessions end and its leases end like a force release; its clients must be given a new identity.",
          () => api("DELETE", "/admin/v1/identities/" + encodeURIComponent(x.id))));
      }
      return el("tr", { "data-identity": x.id },
        el("td", { class: "mono" }, x.id), el("td", {}, x.name), el("td", {}, when(x.created_at)),
        el("td", {}, x.expires_at ? when(x.expires_at) : "never"),
        el("td", {}, stateBadge(x.revoked_at ? "revoked" : x.status === "ok" ? "ok" : x.status)),
        el("td", { class: "actions" }, action));
    });
    fill("identities-rows", i.identities, () => (irows.length ? irows : [emptyRow(6, "No identities.")]));
    const trows = t.tokens.map((x) => {
      let action = null;
      if (!x.revoked_at) {
        action = el("button", { type: "button", class: "danger revoke-token", "data-token": x.id }, "Revoke");
        action.addEventListener("click", () => confirmThen("Revoke admin token " + x.name + " (" + x.id + ")?" +
          (x.id && sessionStorage.getItem(TOKEN_KEY).includes(x.id) ? " It is the token you are signed in with." : ""),
          () => api("DELETE", "/admin/v1/tokens/" + encodeURIComponent(x.id))));
      }
      return el("tr", { "data-token": x.id },
        el("td", { class: "mono" }, x.id), el("td", {}, x.name), el("td", {}, x.role), el("td", {}, when(x.created_at)),
        el("td", {}, x.revoked_at ? when(x.revoked_at) : "—"), el("td", { class: "actions" }, action));
    });
    fill("tokens-rows", t.tokens, () => (trows.length ? trows : [emptyRow(6, "No tokens.")]));
  }

  const RENDER = {
    features: renderFeatures,
    leases: renderLeases,
    instances: renderInstances,
    usage: renderUsage,
    identities: renderIdentities,
  };

  function showOnce(box, textId, secret) {
    $(textId).textContent = secret;
    $(box).hidden = false;
  }

  function hideOnce(box, textId) {
    $(textId).textContent = "";
    $(box).hidden = true;
  }

  // ---- wiring --------------------------------------------------------------

  function start() {
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("token").value.trim();
      $("token").value = "";
      if (token) signIn(token);
    });
    $("signout").addEventListener("click", () => signOut(""));
    $("filter-feature").addEventListener("change", drawLeases);
    $("filter-text").addEventListener("input", drawLeases);
    $("usage-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      refresh();
    });
    $("usage-by").addEventListener("change", refresh);
    $("usage-csv").addEventListener("click", downloadUsageCsv);
    $("identity-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const name = $("identity-name").value.trim();
      const exp = $("identity-expires").value;
      const body = { name };
      if (exp) body.expires_at = new Date(exp).toISOString();
      try {
        const r = await api("POST", "/admin/v1/identities", body);
        $("identity-form").reset();
        showOnce("identity-secret", "identity-secret-text", r.identity_string);
        showError("");
      } catch (e) {
        showError(e.message);
      }
      refresh();
    });
    $("identity-secret-close").addEventListener("click", () => hideOnce("identity-secret", "identity-secret-text"));
    $("token-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        const r = await api("POST", "/admin/v1/tokens", { name: $("token-name").value.trim(), role: $("token-role").value });
        $("token-form").reset();
        showOnce("token-secret", "token-secret-text", r.secret);
        showError("");
      } catch (e) {
        showError(e.message);
      }
      refresh();
    });
    $("token-secret-close").addEventListener("click", () => hideOnce("token-secret", "token-secret-text"));
    window.addEventListener("hashchange", () => {
      hideOnce("identity-secret", "identity-secret-text");
      hideOnce("token-secret", "token-secret-text");
      route();
    });
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved);
    else showSignIn();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
