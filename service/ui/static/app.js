// Sift web view: vanilla JavaScript, no build step, no dependencies.
//
// Rules this file keeps (service/ui/__init__.py serves it under a CSP without inline script):
// - every value from the API (record text, dataset names, notes, errors) reaches the page as a
//   text node or an attribute set through the DOM, never parsed as HTML;
// - the API key lives in sessionStorage and goes only in the Authorization header of fetch
//   calls to this origin, never in a URL;
// - images (histograms, plots) are fetched with the key and shown from object URLs.
"use strict";

const KEY_STORAGE = "sift.apiKey";
const POLL_MS = 1500;
const LIVE = new Set(["queued", "running"]);
const RECORD_ID_CHUNK = 200; // record ids per records request (the API takes at most 200)
const RECORD_ID_URL_CHARS = 6000; // and at most this much of a URL (servers cap request lines)
// Where the API is: the path this page was served under, without its /ui/ part (so a proxy
// that serves Sift under a prefix serves the page and the API under it alike).
const API_ROOT = location.pathname.replace(/\/ui(\/.*)?$/, "");

// --- DOM helpers ---------------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "on") {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (name === "class") {
      node.className = value;
    } else if (name === "hidden" || name === "disabled" || name === "selected") {
      node[name] = Boolean(value);
    } else if (name === "value") {
      node.value = String(value);
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }
  return node;
}

// Like Element.append, but skips null / undefined / false (append would write "null").
function put(node, ...children) {
  return append(node, children);
}

function route(...segments) {
  return "#/" + segments.map((s) => encodeURIComponent(String(s))).join("/");
}

function link(text, ...segments) {
  return el("a", { href: route(...segments) }, text);
}

function num(x, digits = 4) {
  if (x === null || x === undefined) return "—";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(3);
  return x.toFixed(digits);
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

function statusBadge(status) {
  return el("span", { class: "status status-" + String(status).replace(/[^a-z_]/g, "") }, status);
}

function progressCell(job) {
  const p = job.progress || { done: 0, total: 0 };
  if (!p.total) return LIVE.has(job.status) ? el("span", { class: "muted" }, "waiting") : "—";
  return el(
    "span",
    { class: "progress" },
    el("progress", { max: p.total, value: p.done }),
    " ",
    `${p.done}/${p.total}`,
  );
}

function facts(pairs) {
  const dl = el("dl", { class: "facts" });
  for (const [name, value] of pairs) {
    if (value === undefined) continue;
    put(dl, el("dt", {}, name), el("dd", {}, value === null ? "—" : value));
  }
  return dl;
}

function table(headers, rows, options = {}) {
  const head = el(
    "tr",
    {},
    headers.map((h) => el("th", { class: h.num ? "num" : null, title: h.title }, h.label ?? h)),
  );
  const body = rows.length
    ? rows.map((cells) =>
        el(
          "tr",
          {},
          cells.map((cell, i) =>
            el("td", { class: [headers[i] && headers[i].num ? "num" : "", cell && cell.cls ? cell.cls : ""].join(" ").trim() || null },
              cell && cell.cls ? cell.value : cell),
          ),
        ),
      )
    : [el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, options.empty || "none"))];
  return el("div", { class: "scroll" }, el("table", { class: options.class }, el("thead", {}, head), el("tbody", {}, body)));
}

function cls(value, name) {
  return { cls: name, value };
}

function textBlock(text) {
  return el("div", { class: "text" }, text);
}

function jsonBlock(value) {
  return el("pre", {}, JSON.stringify(value, null, 2));
}

function errorBox(err) {
  return el("p", { class: "error" }, err instanceof Error ? err.message : String(err));
}

// --- API -----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

async function request(path, as = "json", key = apiKey()) {
  const response = await fetch(API_ROOT + path, {
    headers: { authorization: "Bearer " + key, accept: as === "blob" ? "image/png" : "application/json" },
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
  });
  if (response.status === 401) {
    // the stored key stopped working (revoked): ask for another; a key being tried is not stored
    if (key === apiKey()) forgetKey("the API key was refused (unknown or revoked); enter another");
    throw new ApiError(401, "the API key was refused");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    let field = null;
    try {
      const body = await response.json();
      if (body && body.error) {
        message = `${response.status}: ${body.error.message}`;
        field = body.error.field;
      }
    } catch (_) {
      // not JSON: keep the status line
    }
    throw new ApiError(response.status, message, field);
  }
  return as === "blob" ? response.blob() : response.json();
}

function qs(params) {
  const search = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined) continue;
    if (Array.isArray(v)) for (const item of v) search.append(k, item); // ?k=a&k=b
    else search.set(k, v);
  }
  const s = search.toString();
  return s ? "?" + s : "";
}

// --- view state: one render at a time; polls and object URLs end with their view -------------

let generation = 0;
let objectUrls = [];

function current(gen) {
  return gen === generation;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function image(path, caption) {
  const img = el("img", { alt: caption });
  const note = el("figcaption", {}, caption);
  const figure = el("figure", { class: "plot" }, img, note);
  const gen = generation;
  request(path, "blob")
    .then((blob) => {
      if (!current(gen)) return;
      const url = URL.createObjectURL(blob);
      objectUrls.push(url);
      img.addEventListener("load", () => figure.setAttribute("data-loaded", "true"), { once: true });
      img.src = url;
    })
    .catch((err) => {
      if (current(gen)) note.replaceChildren(`${caption}: not available (${err.message})`);
    });
  return figure;
}

// Re-reads a job until it is finished, re-rendering `target` each time; then calls `done`.
async function pollJob(gen, path, target, renderStatus, done) {
  for (;;) {
    let job;
    try {
      job = await request(path);
    } catch (err) {
      if (current(gen)) target.replaceChildren(errorBox(err));
      return;
    }
    if (!current(gen)) return;
    target.replaceChildren(renderStatus(job));
    if (!LIVE.has(job.status)) {
      done(job);
      return;
    }
    await sleep(POLL_MS);
    if (!current(gen)) return;
  }
}

function jobFacts(job) {
  const rows = [
    ["Status", statusBadge(job.status)],
    ["Stage", job.stage],
    ["Progress", progressCell(job)],
    ["Created", when(job.created_at)],
    ["Started", when(job.started_at)],
    ["Finished", when(job.finished_at)],
  ];
  if (job.cancel_requested) rows.push(["Cancel", "requested"]);
  const parts = [facts(rows)];
  if (job.error) parts.push(el("p", { class: "error" }, "Error: ", job.error));
  if (job.notes && job.notes.length) {
    parts.push(el("h2", {}, "Notes"), el("ul", {}, job.notes.map((n) => el("li", {}, n))));
  }
  const timings = Object.entries(job.timings || {});
  if (timings.length) {
    parts.push(
      el("h2", {}, "Timings"),
      table([{ label: "Stage" }, { label: "Seconds", num: true }], timings.map(([k, v]) => [k, num(v, 2)]), { class: "compact" }),
    );
  }
  return el("div", { class: "card job" }, parts);
}

// A paged section: `load(offset, limit)` returns {total, node}; buttons move by `limit`.
function paged(limit, load) {
  const body = el("div", {});
  const info = el("span", { class: "muted" });
  const prev = el("button", { type: "button" }, "← Previous");
  const next = el("button", { type: "button" }, "Next →");
  const gen = generation;
  let offset = 0;
  async function show() {
    prev.disabled = next.disabled = true;
    info.replaceChildren("loading…");
    try {
      const { total, node } = await load(offset, limit);
      if (!current(gen)) return;
      body.replaceChildren(node);
      const end = Math.min(offset + limit, total);
      info.replaceChildren(total ? `${offset + 1}–${end} of ${total}` : "0 of 0");
      prev.disabled = offset === 0;
      next.disabled = end >= total;
    } catch (err) {
      if (current(gen)) {
        body.replaceChildren(errorBox(err));
        info.replaceChildren("");
      }
    }
  }
  prev.addEventListener("click", () => { offset = Math.max(0, offset - limit); show(); });
  next.addEventListener("click", () => { offset += limit; show(); });
  show();
  return el("div", { class: "paged" }, el("div", { class: "pager" }, prev, next, info), body);
}

// --- records: text by record id ------------------------------------------------------------

function splitMessages(messages) {
  const list = messages || [];
  const last = list[list.length - 1];
  const hasResponse = last && last.role === "assistant";
  const promptPart = hasResponse ? list.slice(0, -1) : list;
  const prompt = promptPart.length === 1
    ? promptPart[0].content
    : promptPart.map((m) => `${m.role}: ${m.content}`).join("\n");
  return { prompt, response: hasResponse ? last.content : null };
}

const recordCaches = new Map(); // dataset id -> Map(record id -> record)

// The records with these ids, looked up by id (`?record_id=`, one request per chunk of at most
// RECORD_ID_CHUNK ids: one for a page of rows); what was read is kept for the session's next
// views (a dataset's records never change).
async function recordsById(datasetId, ids) {
  let cache = recordCaches.get(datasetId);
  if (!cache) {
    cache = new Map();
    recordCaches.set(datasetId, cache);
  }
  const chunks = [];
  let chars = 0;
  for (const id of new Set(ids)) {
    if (cache.has(id)) continue;
    const size = new URLSearchParams({ record_id: id }).toString().length + 1; // "&record_id=…"
    const last = chunks[chunks.length - 1];
    if (last && last.length < RECORD_ID_CHUNK && chars + size <= RECORD_ID_URL_CHARS) {
      last.push(id);
      chars += size;
    } else {
      chunks.push([id]);
      chars = size;
    }
  }
  const path = `/v1/datasets/${encodeURIComponent(datasetId)}/records`;
  for (const chunk of chunks) {
    let limit = chunk.length;
    let offset = 0;
    for (;;) {
      let page;
      try {
        page = await request(path + qs({ record_id: chunk, limit, offset }));
      } catch (err) {
        if (err.status === 422 && err.field === "query.limit" && limit !== null) {
          limit = null; // this deployment's page size is smaller: take its default, and page on
          continue;
        }
        throw err;
      }
      for (const record of page.items) cache.set(record.record_id, record);
      offset += page.items.length;
      if (!page.items.length || offset >= page.total) break;
    }
  }
  return cache;
}

function recordCells(record) {
  if (!record) return [el("span", { class: "muted" }, "—"), el("span", { class: "muted" }, "—"), ""];
  const { prompt, response } = splitMessages(record.messages);
  return [record.subtask ?? "—", textBlock(prompt), response === null ? el("span", { class: "muted" }, "(no response)") : textBlock(response)];
}

// --- views ---------------------------------------------------------------------------------

const JOB_KINDS = [
  { kind: "valuation", path: "/v1/valuations", view: "valuations", name: (j) => j.method },
  { kind: "score set", path: "/v1/score-sets", view: "score-sets", name: (j) => j.name || j.scorer },
  { kind: "study", path: "/v1/studies", view: "studies", name: (j) => j.name || "study" },
  { kind: "curation", path: "/v1/curations", view: "curations", name: (j) => j.name || (j.recipe && j.recipe.pick && j.recipe.pick.method) || "curation" },
  { kind: "evaluation", path: "/v1/evaluations", view: "evaluations", name: (j) => j.name || "evaluation" },
];

async function viewJobs(main, gen) {
  put(main, el("h1", {}, "Jobs"), el("p", { class: "muted" }, "The newest 20 of each kind; live jobs refresh every 1.5 s."));
  const holder = el("div", {});
  put(main, holder);
  for (;;) {
    const lists = await Promise.all(
      JOB_KINDS.map((k) => request(`${k.path}?limit=20`).then((page) => ({ k, page }), (err) => ({ k, err }))),
    );
    if (!current(gen)) return;
    const rows = [];
    const errors = [];
    for (const { k, page, err } of lists) {
      if (err) { errors.push(errorBox(`${k.kind}s: ${err.message}`)); continue; }
      for (const job of page.items) rows.push({ k, job });
    }
    rows.sort((a, b) => String(b.job.created_at).localeCompare(String(a.job.created_at)));
    holder.replaceChildren(
      ...errors,
      table(
        ["Kind", "Name", "Status", "Stage", "Progress", "Created", "Id"],
        rows.map(({ k, job }) => [
          k.kind,
          link(k.name(job), k.view, job.id),
          statusBadge(job.status),
          job.stage ?? "—",
          progressCell(job),
          when(job.created_at),
          cls(job.id, "id"),
        ]),
        { empty: "no jobs yet", class: "jobs" },
      ),
    );
    if (!rows.some(({ job }) => LIVE.has(job.status))) return;
    await sleep(POLL_MS);
    if (!current(gen)) return;
  }
}

function listView(title, path, headers, row, limit = 50) {
  return async (main) => {
    put(main,
      el("h1", {}, title),
      paged(limit, async (offset, size) => {
        const page = await request(`${path}${qs({ limit: size, offset })}`);
        return { total: page.total, node: table(headers, page.items.map(row), { class: "list" }) };
      }),
    );
  };
}

const viewDatasets = listView(
  "Datasets",
  "/v1/datasets",
  ["Name", { label: "Records", num: true }, "Subtasks", { label: "Duplicates", num: true }, "Created", "Id"],
  (d) => [
    link(d.name, "datasets", d.id),
    d.n_records,
    Object.entries(d.subtasks || {}).map(([s, n]) => `${s} (${n})`).join(", ") || "—",
    d.n_duplicates,
    when(d.created_at),
    cls(d.id, "id"),
  ],
);

async function viewDataset(main, gen, id) {
  const dataset = await request(`/v1/datasets/${encodeURIComponent(id)}`);
  if (!current(gen)) return;
  put(main,
    el("h1", {}, "Dataset ", el("span", { class: "name" }, dataset.name)),
    el("div", { class: "card" }, facts([
      ["Id", dataset.id],
      ["Records", dataset.n_records],
      ["Prompt-only records", dataset.n_prompt_only],
      ["Duplicates skipped", dataset.n_duplicates],
      ["Subtasks", Object.entries(dataset.subtasks || {}).map(([s, n]) => `${s}: ${n}`).join(", ") || "—"],
      ["Content hash", dataset.content_hash],
      ["Created", when(dataset.created_at)],
    ])),
    el("h2", {}, "Records"),
    paged(25, async (offset, limit) => {
      const page = await request(`/v1/datasets/${encodeURIComponent(id)}/records${qs({ limit, offset })}`);
      return {
        total: page.total,
        node: table(
          [{ label: "#", num: true }, "Record id", "Subtask", "Prompt", "Response", "Metadata"],
          page.items.map((r) => {
            const { prompt, response } = splitMessages(r.messages);
            return [
              r.position,
              cls(r.record_id, "id"),
              r.subtask ?? "—",
              textBlock(prompt),
              response === null ? el("span", { class: "muted" }, "(no response)") : textBlock(response),
              Object.keys(r.metadata || {}).length ? el("pre", { class: "inline" }, JSON.stringify(r.metadata)) : "—",
            ];
          }),
          { class: "records" },
        ),
      };
    }),
  );
}

function jobListView(title, path, view, extra) {
  return listView(
    title,
    path,
    ["Name", ...extra.map((e) => e.label), "Status", "Progress", "Created", "Id"],
    (j) => [
      link(JOB_KINDS.find((k) => k.view === view).name(j), view, j.id),
      ...extra.map((e) => e.value(j)),
      statusBadge(j.status),
      progressCell(j),
      when(j.created_at),
      cls(j.id, "id"),
    ],
  );
}

const datasetLink = (id) => (id ? link(id, "datasets", id) : "—");

const viewValuations = jobListView("Valuations", "/v1/valuations", "valuations", [
  { label: "Pool", value: (j) => datasetLink(j.pool_dataset_id) },
  { label: "Probes", value: (j) => datasetLink(j.probe_dataset_id) },
]);

async function datasetName(id, target) {
  if (!id) return;
  try {
    const d = await request(`/v1/datasets/${encodeURIComponent(id)}`);
    target.replaceChildren(link(d.name, "datasets", id));
  } catch (err) {
    target.replaceChildren(id, " ", el("span", { class: "muted" }, `(${err.message})`));
  }
}

function datasetRef(id) {
  if (!id) return "—";
  const span = el("span", {}, id);
  datasetName(id, span);
  return span;
}

function valuationHead(v) {
  return el("div", { class: "card" }, facts([
    ["Method", v.method],
    ["Pool", datasetRef(v.pool_dataset_id)],
    ["Probes", datasetRef(v.probe_dataset_id)],
    ["Model", v.model_id],
    ["Warmup run", v.warmup_run_id ? link(v.warmup_run_id, "warmup-runs", v.warmup_run_id) : null],
  ]));
}

async function viewValuation(main, gen, id) {
  const path = `/v1/valuations/${encodeURIComponent(id)}`;
  const head = el("div", {});
  const status = el("div", {}, el("p", { class: "muted" }, "loading…"));
  const results = el("div", {});
  put(main, el("h1", {}, "Valuation ", el("span", { class: "id" }, id)), head, status, results);
  let shownRun; // the head is drawn again only when the warmup run becomes known
  await pollJob(gen, path, status, (v) => {
    if (v.warmup_run_id !== shownRun) {
      shownRun = v.warmup_run_id;
      head.replaceChildren(valuationHead(v));
    }
    const card = jobFacts(v);
    const extra = [];
    if (v.n_scored !== null && v.n_scored !== undefined) extra.push(["Records scored", v.n_scored]);
    if (v.skipped && v.skipped.length) extra.push(["Left out (max_length)", v.skipped.length]);
    if (v.truncated && v.truncated.length) extra.push(["Responses cut by max_length", v.truncated.length]);
    if (extra.length) put(card, facts(extra));
    return card;
  }, (v) => {
    if (v.status === "succeeded") put(results, valuationResults(gen, v));
  });
}

function summaryFacts(s) {
  const q = s.quantiles || {};
  return facts([
    ["Count", s.count],
    ["Missing", s.missing],
    ["Mean", num(s.mean)],
    ["Std", num(s.std)],
    ["Min", num(s.min)],
    ["Max", num(s.max)],
    ["Quantiles", Object.entries(q).map(([k, x]) => `${k}: ${num(x)}`).join(", ") || "—"],
  ].filter(([, v]) => v !== undefined));
}

function valuationResults(gen, v) {
  const base = `/v1/valuations/${encodeURIComponent(v.id)}`;
  const distribution = el("div", { class: "card" }, el("p", { class: "muted" }, "loading…"));
  request(`${base}/distribution`).then(
    (d) => current(gen) && distribution.replaceChildren(summaryFacts(d)),
    (err) => current(gen) && distribution.replaceChildren(errorBox(err)),
  );
  const ranked = paged(50, async (offset, limit) => {
    const page = await request(`${base}/scores${qs({ limit, offset })}`);
    const subtasks = [...new Set(page.items.flatMap((s) => Object.keys(s.per_subtask || {})))].sort();
    let byId = new Map();
    let textError = null;
    try {
      byId = await recordsById(v.pool_dataset_id, page.items.map((s) => s.record_id));
    } catch (err) {
      textError = err;
    }
    const node = table(
      [
        { label: "Rank", num: true, title: "1 = the most valuable (the API's rank + 1)" },
        { label: "Score", num: true },
        ...subtasks.map((s) => ({ label: s, num: true, title: `mean over the probes of subtask ${s}` })),
        "Subtask",
        "Prompt",
        "Response",
        "Record id",
      ],
      page.items.map((s) => [
        s.rank + 1,
        num(s.score),
        ...subtasks.map((t) => num(s.per_subtask ? s.per_subtask[t] : null)),
        ...recordCells(byId.get(s.record_id)),
        cls(s.record_id, "id"),
      ]),
      { class: "ranked" },
    );
    return { total: page.total, node: textError ? el("div", {}, errorBox(textError), node) : node };
  });
  return el(
    "div",
    { class: "results" },
    el("h2", {}, "Score distribution"),
    distribution,
    image(`${base}/distribution.png`, "Histogram of the scores"),
    el("h2", {}, "Ranked records"),
    subtaskNote(v),
    ranked,
  );
}

function subtaskNote(v) {
  return el("p", { class: "muted" }, v.probe_dataset_id
    ? "Score: the maximum over probe subtasks of the mean over each subtask's probes (one column per subtask)."
    : "No probes: scores rank by self-influence (the most suspicious first).");
}

const viewScoreSets = jobListView("Score sets", "/v1/score-sets", "score-sets", [
  { label: "Scorer", value: (j) => j.scorer },
  { label: "Dataset", value: (j) => datasetLink(j.dataset_id) },
]);

async function viewScoreSet(main, gen, id) {
  const path = `/v1/score-sets/${encodeURIComponent(id)}`;
  const status = el("div", {});
  const results = el("div", {});
  put(main, el("h1", {}, "Score set ", el("span", { class: "id" }, id)), status, results);
  await pollJob(gen, path, status, (s) => el("div", {},
    el("div", { class: "card" }, facts([
      ["Name", s.name],
      ["Scorer", s.scorer],
      ["Dataset", datasetRef(s.dataset_id)],
      ["Probes", s.probe_dataset_id ? datasetRef(s.probe_dataset_id) : undefined],
      ["Records", s.n_records],
    ])),
    jobFacts(s),
  ), (s) => {
    if (s.status === "succeeded") put(results, scoreSetResults(gen, s));
  });
}

function scoreSetResults(gen, s) {
  const base = `/v1/score-sets/${encodeURIComponent(s.id)}`;
  const columns = s.columns || [];
  const summary = s.summary || {};
  const parts = [
    el("h2", {}, "Columns"),
    table(
      ["Column", ...["Count", "Missing", "Mean", "Std", "Min", "Max"].map((label) => ({ label, num: true }))],
      columns.map((c) => {
        const x = summary[c] || {};
        return [c, x.count, x.missing, num(x.mean), num(x.std), num(x.min), num(x.max)];
      }),
    ),
  ];
  if (s.report) parts.push(el("h2", {}, "Diversity report"), facts(Object.entries(s.report).map(([k, x]) => [k, num(x)])));
  if (columns.length) {
    const plot = el("div", {});
    const select = el("select", { "aria-label": "column" }, columns.map((c) => el("option", { value: c }, c)));
    const show = () => plot.replaceChildren(image(`${base}/distribution.png${qs({ column: select.value })}`, `Histogram of ${select.value}`));
    select.addEventListener("change", show);
    show();
    parts.push(el("h2", {}, "Histogram"), el("label", {}, "Column ", select), plot);
  }
  parts.push(
    el("h2", {}, "Values (dataset order)"),
    paged(50, async (offset, limit) => {
      const [values, records] = await Promise.all([
        request(`${base}/values${qs({ limit, offset })}`),
        request(`/v1/datasets/${encodeURIComponent(s.dataset_id)}/records${qs({ limit, offset })}`).catch(() => null),
      ]);
      const byId = new Map((records ? records.items : []).map((r) => [r.record_id, r]));
      return {
        total: values.total,
        node: table(
          ["Record id", ...columns.map((c) => ({ label: c, num: true })), "Prompt"],
          values.items.map((r) => {
            const rec = byId.get(r.record_id);
            return [cls(r.record_id, "id"), ...columns.map((c) => num(r.values[c])), rec ? textBlock(splitMessages(rec.messages).prompt) : "—"];
          }),
          { class: "values" },
        ),
      };
    }),
  );
  return el("div", { class: "results" }, parts);
}

const viewStudies = jobListView("Studies", "/v1/studies", "studies", [
  { label: "Evaluation set", value: (j) => datasetLink(j.eval_dataset_id) },
]);

async function viewStudy(main, gen, id) {
  const path = `/v1/studies/${encodeURIComponent(id)}`;
  const status = el("div", {});
  const results = el("div", {});
  put(main, el("h1", {}, "Study ", el("span", { class: "id" }, id)), status, results);
  await pollJob(gen, path, status, (s) => el("div", {},
    el("div", { class: "card" }, facts([
      ["Name", s.name],
      ["Warmup run", link(s.warmup_run_id, "warmup-runs", s.warmup_run_id)],
      ["Evaluation set", datasetRef(s.eval_dataset_id)],
      ["Probe sets", s.probe_sets.map((p) => `${p.name}`).join(", ")],
      ["Pair key", s.pair_key],
      ["Reference", s.reference],
    ])),
    jobFacts(s),
  ), (s) => {
    if (s.status !== "succeeded" || !s.result) return;
    const r = s.result;
    const verdicts = [];
    const points = [];
    for (const set of r.probe_sets || []) {
      for (const [metric, m] of Object.entries(set.metrics || {})) {
        verdicts.push([set.name, metric, m.verdict.outcome, m.verdict.exceeds_reference_from_step ?? "—"]);
        for (const p of m.points) points.push([set.name, metric, p.step, num(p.value), `[${num(p.low)}, ${num(p.high)}]`, num(p.std)]);
      }
    }
    put(results,
      el("h2", {}, "Verdicts"),
      table(["Probe set", "Metric", "Verdict", "Exceeds reference from step"], verdicts, { class: "verdicts" }),
      r.verdict_rule ? el("p", { class: "muted" }, r.verdict_rule) : null,
      el("h2", {}, "Curves"),
      image(`${path}/plot.png`, "s_in and s_cross against training step"),
      table(["Probe set", "Metric", { label: "Step", num: true }, { label: "Value", num: true }, "Interval", { label: "Std", num: true }], points, { class: "points" }),
    );
  });
}

const viewCurations = jobListView("Curations", "/v1/curations", "curations", [
  { label: "Dataset", value: (j) => datasetLink(j.dataset_id) },
]);

async function viewCuration(main, gen, id) {
  const path = `/v1/curations/${encodeURIComponent(id)}`;
  const status = el("div", {});
  const results = el("div", {});
  put(main, el("h1", {}, "Curation ", el("span", { class: "id" }, id)), status, results);
  await pollJob(gen, path, status, (c) => el("div", {},
    el("div", { class: "card" }, facts([["Name", c.name], ["Dataset", datasetRef(c.dataset_id)], ["Selected", c.n_selected]])),
    jobFacts(c),
    el("h2", {}, "Recipe"),
    jsonBlock(c.recipe),
  ), (c) => {
    if (c.status !== "succeeded") return;
    if (c.stats) put(results, el("h2", {}, "Filter statistics"), jsonBlock(c.stats));
    const ids = c.record_ids || [];
    put(results,
      el("h2", {}, `Selected records (pick order, first ${Math.min(ids.length, 200)} of ${ids.length})`),
      table([{ label: "#", num: true }, "Record id"], ids.slice(0, 200).map((r, i) => [i + 1, cls(r, "id")]), { class: "picked" }),
    );
  });
}

const viewEvaluations = jobListView("Evaluations", "/v1/evaluations", "evaluations", [
  { label: "Target", value: (j) => datasetLink(j.target_dataset_id) },
  { label: "Budget", value: (j) => j.budget },
]);

function interval(x) {
  return x ? `${num(x.mean)} [${num(x.low)}, ${num(x.high)}]` : "—";
}

async function viewEvaluation(main, gen, id) {
  const path = `/v1/evaluations/${encodeURIComponent(id)}`;
  const status = el("div", {});
  const results = el("div", {});
  put(main, el("h1", {}, "Evaluation ", el("span", { class: "id" }, id)), status, results);
  await pollJob(gen, path, status, (e) => el("div", {},
    el("div", { class: "card" }, facts([
      ["Name", e.name],
      ["Pool", datasetRef(e.pool_dataset_id)],
      ["Target", datasetRef(e.target_dataset_id)],
      ["Budget", e.budget],
      ["Arms", e.arms.map((a) => a.name).join(", ")],
    ])),
    jobFacts(e),
  ), (e) => {
    if (e.status !== "succeeded" || !e.result) return;
    const r = e.result;
    const metric = r.metric;
    const rows = r.arms.map((a) => [
      a.name + (a.name === r.reference ? " (reference)" : ""),
      a.kind,
      a.n_train,
      interval(a.loss),
      num(a.loss.seed_std),
      a.vs_reference ? interval(a.vs_reference.loss) : "—",
      ...(metric ? [interval(a.metric), a.vs_reference && a.vs_reference.metric ? interval(a.vs_reference.metric) : "—"] : []),
    ]);
    rows.push([
      "untrained", "base", 0, interval(r.base.loss), "—", "—",
      ...(metric ? [interval(r.base.metric), "—"] : []),
    ]);
    put(results,
      el("h2", {}, "Evaluation table"),
      el("p", { class: "muted" }, `${r.n_target} target examples; ${Math.round(r.confidence * 100)}% bootstrap intervals (${r.bootstrap} resamples); loss in nats per token, lower is better.`),
      table(
        ["Arm", "Kind", { label: "Trained on", num: true }, "Target loss [interval]", { label: "Seed std", num: true }, "Loss vs reference",
          ...(metric ? [`${metric} [interval]`, "Metric vs reference"] : [])],
        rows,
        { class: "evaluation" },
      ),
      r.notes && r.notes.length ? el("ul", {}, r.notes.map((n) => el("li", {}, n))) : null,
      image(`${path}/plot.png`, "Target loss per arm and training curves"),
    );
  });
}

async function viewWarmupRun(main, gen, id) {
  const path = `/v1/warmup-runs/${encodeURIComponent(id)}`;
  const run = await request(path);
  if (!current(gen)) return;
  put(main,
    el("h1", {}, "Warmup run ", el("span", { class: "id" }, id)),
    el("div", { class: "card" }, facts([
      ["Origin", run.origin],
      ["Status", statusBadge(run.status)],
      ["Model", run.model_id],
      ["Pool", datasetRef(run.pool_dataset_id)],
      ["Trained on", run.n_train],
      ["LoRA", `r=${run.lora.r}, alpha=${run.lora.alpha}, dropout=${run.lora.dropout}, ${run.lora.target_modules.join(", ")}`],
      ["Created", when(run.created_at)],
    ])),
    el("h2", {}, "Checkpoints"),
    table(
      [{ label: "Epoch", num: true }, { label: "Step", num: true }, { label: "Learning rate", num: true }, { label: "Train loss", num: true }],
      run.checkpoints.map((c) => {
        const epoch = run.curve && run.curve.epochs.find((x) => x.epoch === c.epoch);
        return [c.epoch, c.step, num(c.learning_rate), epoch ? num(epoch.train_loss) : "—"];
      }),
    ),
  );
  for (const h of (run.curve && run.curve.heldout) || []) {
    put(main,
      el("h2", {}, "Held-out loss"),
      el("p", {}, "Dataset ", datasetRef(h.dataset_id), ` (${h.n_records} records, ${h.n_skipped} skipped)`),
      table([{ label: "Epoch", num: true }, { label: "Step", num: true }, { label: "Loss", num: true }], h.epochs.map((x) => [x.epoch, x.step, num(x.loss)])),
    );
  }
  if (run.plots) put(main, el("h2", {}, "Training curve"), image(`${path}/plot.png`, "Training loss and learning rate"));
}

// --- key, routing ----------------------------------------------------------------------------

let loginMessage = null;

function forgetKey(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  loginMessage = message || null;
  render();
}

function viewLogin(main) {
  const input = el("input", { type: "password", id: "api-key", name: "api-key", autocomplete: "off", placeholder: "sift_...", required: true });
  const error = el("p", { class: "error" }, loginMessage || "");
  const form = el(
    "form",
    { class: "login card", id: "login" },
    el("h1", {}, "Sift"),
    el("p", {}, "Enter an API key (",
      el("code", {}, "sift keys create"), ", or ", el("code", {}, ".sift/api-key"),
      " on the embedded default). It is kept in this tab's session storage only and sent as the Authorization header."),
    el("label", { for: "api-key" }, "API key"),
    input,
    el("button", { type: "submit" }, "Open"),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    error.replaceChildren("checking…");
    try {
      await request("/v1/me", "json", key);
      sessionStorage.setItem(KEY_STORAGE, key);
      loginMessage = null;
      render();
    } catch (err) {
      error.replaceChildren(err.status === 401 ? "That key was refused (unknown or revoked)." : err.message);
    }
  });
  put(main, form);
  input.focus();
}

const ROUTES = [
  [/^$/, viewJobs],
  [/^jobs$/, viewJobs],
  [/^datasets$/, viewDatasets],
  [/^datasets\/([^/]+)$/, viewDataset],
  [/^valuations$/, viewValuations],
  [/^valuations\/([^/]+)$/, viewValuation],
  [/^score-sets$/, viewScoreSets],
  [/^score-sets\/([^/]+)$/, viewScoreSet],
  [/^studies$/, viewStudies],
  [/^studies\/([^/]+)$/, viewStudy],
  [/^curations$/, viewCurations],
  [/^curations\/([^/]+)$/, viewCuration],
  [/^evaluations$/, viewEvaluations],
  [/^evaluations\/([^/]+)$/, viewEvaluation],
  [/^warmup-runs\/([^/]+)$/, viewWarmupRun],
];

let who = null;

async function showWho(gen) {
  const target = document.getElementById("who");
  if (who) { target.replaceChildren(who); return; }
  try {
    const me = await request("/v1/me");
    if (!current(gen)) return;
    who = `${me.tenant_name} (${me.role})`;
    target.replaceChildren(who);
  } catch (_) {
    // a refused key shows the login form
  }
}

async function render() {
  generation += 1;
  const gen = generation;
  for (const url of objectUrls) URL.revokeObjectURL(url);
  objectUrls = [];
  const main = document.getElementById("main");
  main.replaceChildren();
  const signedIn = Boolean(apiKey());
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("forget").hidden = !signedIn;
  if (!signedIn) {
    who = null;
    document.getElementById("who").replaceChildren();
    viewLogin(main);
    return;
  }
  showWho(gen);
  const hash = location.hash.replace(/^#\/?/, "");
  for (const [pattern, view] of ROUTES) {
    const match = pattern.exec(hash);
    if (!match) continue;
    try {
      const args = match.slice(1).map((s) => decodeURIComponent(s));
      await view(main, gen, ...args);
    } catch (err) {
      if (current(gen) && !(err instanceof ApiError && err.status === 401)) put(main, errorBox(err));
    }
    return;
  }
  put(main, el("h1", {}, "Not found"), el("p", {}, "No such page: ", hash), link("Jobs"));
}

document.getElementById("forget").addEventListener("click", () => forgetKey(null));
window.addEventListener("hashchange", render);
render();
