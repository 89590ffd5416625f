// The Lifeboat dashboard's only script, hand-written, no build step.
// - Forms with data-api are sent to the REST API as JSON — the calls the CLI makes — with
//   the session's CSRF token; the server's error message is shown as it comes.
// - Buttons with data-open open their <dialog>; data-close closes it.
// - /events (Server-Sent Events) sends {"element id": "html"}: each is put in place.
(function () {
  "use strict";

  const FLASH = "lifeboat-flash";
  const csrf = () => {
    const m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.content : "";
  };

  // A form's fields as the API's JSON body (and query, for fields marked data-query).
  // Empty fields are left out, so the server's defaults apply.
  function fieldsOf(form) {
    const body = {};
    const query = new URLSearchParams();
    for (const el of form.elements) {
      if (!el.name || el.disabled) continue;
      if (el.hasAttribute("data-query")) {
        if (el.type === "checkbox") {
          if (el.checked) query.set(el.name, "true");
        } else if (el.value) {
          query.set(el.name, el.value);
        }
        continue;
      }
      if (el.type === "checkbox") {
        body[el.name] = el.checked;
        continue;
      }
      // A NIC's settings (the network dialog): {nics: [{mac, failover, test, home}]},
      // each setting in the CLI's text form, which the API reads as it is.
      const nic = el.closest("fieldset[data-mac]");
      if (nic) {
        body.nics = body.nics || [];
        let entry = body.nics.find((n) => n.mac === nic.dataset.mac);
        if (!entry) {
          entry = { mac: nic.dataset.mac };
          body.nics.push(entry);
        }
        if (el.value.trim() !== "") entry[el.name] = el.value.trim();
        continue;
      }
      const v = el.value.trim();
      if (v === "") continue;
      switch (el.dataset.type) {
        case "int":
          body[el.name] = Number.parseInt(v, 10);
          break;
        case "bool":
          body[el.name] = v === "true";
          break;
        case "json":
          // A value the page carries as it is (e.g. a VM's DNS record, kept by the
          // network dialog, which edits only the NICs).
          body[el.name] = JSON.parse(v);
          break;
        case "ports":
          body[el.name] = v.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
          break;
        case "map": {
          // As the CLI's --network-map: SOURCE=TARGET, split at the first "=".
          const m = {};
          for (const pair of v.split(",").map((p) => p.trim()).filter(Boolean)) {
            const at = pair.indexOf("=");
            if (at < 1) throw new Error("network map " + pair + ": write SOURCE=TARGET, e.g. user=isolated");
            m[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
          }
          body[el.name] = m;
          break;
        }
        default:
          body[el.name] = v;
      }
    }
    return { body, query };
  }

  async function send(form) {
    const error = form.querySelector('[role="alert"]');
    const working = form.querySelector(".working");
    const buttons = form.querySelectorAll("button");
    if (error) {
      error.hidden = true;
      error.textContent = "";
    }
    let fields;
    try {
      fields = fieldsOf(form);
    } catch (e) {
      if (error) {
        error.textContent = e.message;
        error.hidden = false;
      }
      return;
    }
    const { body, query } = fields;
    const method = form.dataset.method || "POST";
    let url = form.dataset.api;
    const qs = query.toString();
    if (qs) url += (url.includes("?") ? "&" : "?") + qs;
    buttons.forEach((b) => (b.disabled = true));
    form.setAttribute("aria-busy", "true");
    if (working) working.hidden = false;
    let resp = null;
    let text = "";
    try {
      resp = await fetch(url, {
        method,
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        body: method === "DELETE" || method === "GET" ? undefined : JSON.stringify(body),
      });
      text = await resp.text();
    } catch (e) {
      text = "The server did not answer: " + e.message;
    } finally {
      buttons.forEach((b) => (b.disabled = false));
      form.removeAttribute("aria-busy");
      if (working) working.hidden = true;
    }
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (resp && resp.status === 202 && data && data.id && data.steps_total !== undefined) {
      // An operation runs in the server: follow it here. Closing the page stops nothing.
      data = await followOperation(form, data);
      if (data.status !== "succeeded") {
        showError(form, data.error || "The operation ended " + data.status + ".");
        return;
      }
      return done(form, { message: lastLine(data) });
    }
    if (!resp || !resp.ok) {
      // The server's own words: they say what went wrong and what to do.
      const message = (data && data.error) || text || "HTTP " + (resp ? resp.status : "error");
      if (error) {
        error.textContent = message;
        error.hidden = false;
        error.setAttribute("tabindex", "-1");
        error.focus();
      }
      return;
    }
    done(form, data);
  }

  function lastLine(op) {
    const lines = (op.log || "").trim().split("\n");
    return lines[lines.length - 1].replace(/^\S+ /, "");
  }

  function showError(form, message) {
    const error = form.querySelector('[role="alert"]');
    if (!error) return;
    error.textContent = message;
    error.hidden = false;
    error.setAttribute("tabindex", "-1");
    error.focus();
  }

  // Polls an operation until it ends, showing its current step in the form.
  async function followOperation(form, op) {
    const working = form.querySelector(".working");
    const buttons = form.querySelectorAll("button");
    buttons.forEach((b) => (b.disabled = true));
    form.setAttribute("aria-busy", "true");
    if (working) working.hidden = false;
    try {
      while (op.status === "running") {
        if (working) {
          working.textContent =
            (op.undoing ? "Undoing: " : "") + op.step + " (step " + op.steps_done + " of " + op.steps_total + ")";
        }
        await new Promise((r) => setTimeout(r, 1000));
        try {
          const resp = await fetch("/api/v1/operations/" + encodeURIComponent(op.id), {
            credentials: "same-origin",
          });
          if (resp.ok) op = await resp.json();
        } catch (_) {
          // The server may restart: the operation goes on; ask again.
        }
      }
    } finally {
      buttons.forEach((b) => (b.disabled = false));
      form.removeAttribute("aria-busy");
      if (working) working.hidden = true;
    }
    return op;
  }

  function done(form, data) {
    const render = form.dataset.render;
    if (render === "scan") return renderScan(data);
    if (render === "token") return renderToken(form, data);
    // Network settings answer what could not be checked now: said after "Saved."
    const notes = data && Array.isArray(data.notes) && data.notes.length ? "Saved. " + data.notes.join(" ") : null;
    const message = (data && (data.message || data.note)) || notes || form.dataset.done || "Done.";
    sessionStorage.setItem(FLASH, message);
    const then = form.dataset.then;
    if (!then || then === "reload") window.location.reload();
    else window.location.assign(then);
  }

  function cell(row, text, tag) {
    const c = document.createElement(tag || "td");
    if (tag === "th") c.scope = "row";
    c.textContent = text;
    row.appendChild(c);
    return c;
  }

  // The scan's answer as a table; agents not enrolled get an enroll form.
  function renderScan(report) {
    const out = document.getElementById("scan-results");
    out.replaceChildren();
    if (!report.agents.length) {
      const p = document.createElement("p");
      p.textContent = "No agents found in " + report.range + " (" + report.probed + " addresses and ports probed).";
      out.appendChild(p);
      return;
    }
    const wrap = document.createElement("div");
    wrap.className = "scroll";
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const h of ["Agent", "Address", "Version", "Certificate (SHA-256)", "VMs", "Enroll"]) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = h;
      head.appendChild(th);
    }
    const body = table.createTBody();
    const template = document.getElementById("enroll-template");
    for (const a of report.agents) {
      const row = body.insertRow();
      row.dataset.address = a.address;
      cell(row, a.hostname, "th");
      cell(row, a.address);
      cell(row, a.version);
      const fp = cell(row, a.fingerprint);
      fp.className = "mono";
      if (!a.fingerprint_matches) {
        fp.textContent += " — MISMATCH: the hello names another certificate";
        fp.classList.add("error");
      }
      cell(row, a.vms ? (a.vms.length ? a.vms.join(", ") : "(none)") : "shown once enrolled here");
      const action = cell(row, a.enrolled ? "enrolled" : "");
      // No template: this user's role does not enroll (the server would refuse).
      if (!a.enrolled && template) {
        const form = template.content.firstElementChild.cloneNode(true);
        form.querySelector('[name="address"]').value = a.address;
        form.querySelector('[name="fingerprint"]').value = a.fingerprint;
        form.querySelector('[name="code"]').setAttribute("aria-label", "Enrollment code for " + a.hostname);
        action.appendChild(form);
      }
    }
    wrap.appendChild(table);
    out.appendChild(wrap);
  }

  function renderToken(form, t) {
    const out = document.getElementById("new-token");
    out.replaceChildren();
    const p = document.createElement("p");
    p.textContent = "Token " + t.name + " (shown this once; copy it now): ";
    const code = document.createElement("code");
    code.className = "token";
    code.textContent = t.token;
    p.appendChild(code);
    out.appendChild(p);
    form.reset();
  }

  document.addEventListener("submit", (ev) => {
    const form = ev.target.closest("form[data-api]");
    if (!form) return;
    ev.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    send(form);
  });

  document.addEventListener("click", (ev) => {
    const open = ev.target.closest("[data-open]");
    if (open) {
      const d = document.getElementById(open.dataset.open);
      if (d) d.showModal();
    }
    const close = ev.target.closest("[data-close]");
    if (close) close.closest("dialog").close();
  });

  document.addEventListener("DOMContentLoaded", () => {
    const main = document.getElementById("main");
    const flash = sessionStorage.getItem(FLASH);
    if (flash && main) {
      sessionStorage.removeItem(FLASH);
      const p = document.createElement("p");
      p.className = "flash";
      p.setAttribute("role", "status");
      p.textContent = flash;
      const h1 = main.querySelector("h1");
      main.insertBefore(p, h1 ? h1.nextSibling : main.firstChild);
    }
    if (!csrf()) return;
    // One event stream per open page, closed when the page is left (or kept in the
    // back-forward cache): an open stream holds one of the few connections a browser
    // keeps to a server.
    let events = null;
    const listen = () => {
      events = new EventSource("/events");
      events.addEventListener("fragments", (ev) => {
        const fragments = JSON.parse(ev.data);
        for (const [id, html] of Object.entries(fragments)) {
          const el = document.getElementById(id);
          // Server-rendered and escaped there.
          if (el && el.innerHTML !== html) el.innerHTML = html;
        }
        document.body.dataset.live = "on";
        // A VM page whose state changed offers a reload for the actions it has now
        // (not done by itself: the operator may be typing in a dialog).
        const key = document.querySelector("[data-actions-key]");
        const stale = document.getElementById("actions-stale");
        if (key && stale && key.textContent.trim() !== key.dataset.actionsKey) stale.hidden = false;
      });
      events.addEventListener("error", () => (document.body.dataset.live = "off"));
    };
    listen();
    window.addEventListener("pagehide", () => events && events.close());
    window.addEventListener("pageshow", (ev) => {
      if (ev.persisted) listen();
    });
  });
})();
