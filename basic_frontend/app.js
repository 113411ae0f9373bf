// TxDx basic frontend: one page that drives every endpoint of /api.
//
// Plain JavaScript, no framework, no build step. Sections, in order:
//   catalogue · DOM helpers · raw-response panel · problems · API client and
//   session · routing · tickets (list, form, detail with live progress) ·
//   integrations · users · audit · queue · start-up.
// The page calls only the public API, with the access token in an
// Authorization header; tokens live in sessionStorage (this tab only).
'use strict';

// ------------------------------------------------------------- catalogue --

// Mirrors shared/src/providers.rs: the actions of each provider with an
// example of their params, and the accepted credential combinations.
const CATALOGUE = {
  PALO_ALTO: {
    label: 'Palo Alto',
    credentials: [['api_key'], ['username', 'password']],
    actions: {
      block_ip: {
        summary: 'Tag an IP so a dynamic address group blocks it',
        example: { ip: '203.0.113.7', tag: 'txdx-blocked', timeout_secs: 3600 },
      },
      unblock_ip: { summary: 'Remove the block tag from an IP', example: { ip: '203.0.113.7' } },
    },
  },
  SPLUNK: {
    label: 'Splunk',
    credentials: [['token'], ['username', 'password'], ['hec_token']],
    actions: {
      run_search: {
        summary: 'Run a search job and return its rows',
        example: { query: 'search index=main src_ip=203.0.113.7 | head 20', earliest_time: '-24h' },
      },
      send_event: {
        summary: 'Send an event to the HTTP Event Collector',
        example: { event: { message: 'TxDx blocked 203.0.113.7', severity: 'high' }, sourcetype: 'txdx' },
      },
    },
  },
  WAZUH: {
    label: 'Wazuh',
    credentials: [['username', 'password']],
    actions: {
      list_agents: { summary: 'List agents', example: {} },
      run_active_response: {
        summary: 'Run an active-response command on agents',
        example: { agents: ['001'], command: 'firewall-drop', srcip: '203.0.113.7' },
      },
    },
  },
  MERAKI: {
    label: 'Meraki',
    credentials: [['api_key']],
    actions: {
      block_ip: {
        summary: "Add a deny rule for an IP to a network's L3 firewall",
        example: { network_id: 'N_1234', ip: '203.0.113.7', comment: 'TxDx block' },
      },
      unblock_ip: { summary: "Remove TxDx's deny rule for an IP", example: { network_id: 'N_1234', ip: '203.0.113.7' } },
      create_policy_object: {
        summary: 'Create a network policy object',
        example: { organization_id: '123456', name: 'txdx-scanner', cidr: '203.0.113.7/32' },
      },
    },
  },
};

const TERMINAL_TICKET_STATUSES = ['EXECUTED', 'FAILED', 'DERIVED'];
const QUEUE_REFRESH_MS = 3000;
const SESSION_KEY = 'txdx.session';

// ----------------------------------------------------------- DOM helpers --

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/** Builds an element: h('a', {href: '#', class: 'x', onclick: fn}, 'text', child). */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'value') el.value = value;
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replaces the children of `el`. */
function fill(el, ...children) {
  el.replaceChildren();
  for (const child of children.flat(Infinity)) {
    if (child !== undefined && child !== null && child !== false) el.append(child);
  }
  return el;
}

/** A table that turns into labelled cards on narrow screens (see style.css). */
function table(columns, rows, { empty = 'Nothing here yet.', rowProps } = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('div', { class: 'table-wrap' },
    h('table', { class: 'data' },
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { class: c.class }, c.label)))),
      h('tbody', {}, rows.map((row) => h('tr', rowProps ? rowProps(row) : {},
        // The span keeps a cell's content one grid item in the narrow-screen layout.
        columns.map((c) => h('td', { class: c.class, 'data-label': c.label }, h('span', {}, c.cell(row)))))))));
}

function badge(status) {
  return h('span', { class: `badge status-${String(status).toLowerCase()}` }, status);
}

function pad(n) { return String(n).padStart(2, '0'); }

/** Local time as YYYY-MM-DD HH:MM:SS; '' for null. */
function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fmtDuration(secs) {
  if (secs === null || secs === undefined) return '–';
  const s = Math.round(secs);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function shortId(id) { return id ? String(id).slice(0, 8) : ''; }

function jsonBlock(value, cls = 'json') {
  return h('pre', { class: cls }, JSON.stringify(value, null, 2));
}

/** Shows a short success message at the top of the page. */
function flash(message) {
  const el = $('#flash');
  el.textContent = message;
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { el.hidden = true; }, 4000);
}

function newIdempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  // Not a secure context (plain http on a LAN address): 16 random bytes in hex.
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, '0')).join('');
}

// ---------------------------------------------------- raw-response panel --

/** Hides most of a token so screenshots and screen shares do not leak sessions. */
function redactTokens(value) {
  if (Array.isArray(value)) return value.map(redactTokens);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k,
      /_token$/.test(k) && typeof v === 'string' ? `${v.slice(0, 12)}… (${v.length} chars)` : redactTokens(v)]));
  }
  return value;
}

function recordRaw(method, url, status, body, ms) {
  $('#raw-summary').textContent = `${method} ${url} → ${status}${ms === undefined ? '' : ` (${ms} ms)`}`;
  $('#raw-summary').className = status >= 400 || status === 0 ? 'bad' : 'ok';
  const text = body === null || body === undefined || body === ''
    ? '(no body)'
    : typeof body === 'string' ? body : JSON.stringify(redactTokens(body), null, 2);
  $('#raw-body').textContent = text;
}

// -------------------------------------------------------------- problems --

/** An API failure carrying the RFC 9457 problem document (or what we got instead). */
class ApiError extends Error {
  constructor(status, body) {
    const problem = body && typeof body === 'object' ? body : {};
    const detail = problem.detail || (typeof body === 'string' && body) || `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.title = problem.title || (status ? `HTTP ${status}` : 'Network error');
    this.detail = detail;
    this.field = problem.field;
    this.type = problem.type;
  }
}

/** Renders a problem readably into `box` and marks the form field it names. */
function showProblem(box, err) {
  if (!(err instanceof ApiError)) err = new ApiError(0, { title: 'Error', detail: String(err?.message || err) });
  const form = box.closest('form');
  if (form && err.field) {
    const target = findFieldElement(form, err.field);
    if (target) {
      target.classList.add('invalid');
      target.scrollIntoView?.({ block: 'nearest' });
    }
  }
  fill(box,
    h('strong', {}, err.status ? `${err.title} (${err.status})` : err.title),
    h('div', { class: 'detail' }, err.detail),
    err.field ? h('div', { class: 'field' }, 'Field: ', h('code', {}, err.field)) : null);
  box.hidden = false;
}

/** The element of `form` for a problem's field: exact data-field, else its closest parent path. */
function findFieldElement(form, field) {
  let path = field;
  while (path) {
    const el = $$('[data-field]', form).find((e) => e.dataset.field === path);
    if (el) return el;
    const cut = Math.max(path.lastIndexOf('.'), path.lastIndexOf('['));
    path = cut > 0 ? path.slice(0, cut) : '';
  }
  return null;
}

function clearProblem(box) {
  box.hidden = true;
  box.replaceChildren();
  const form = box.closest('form');
  if (form) $$('.invalid', form).forEach((e) => e.classList.remove('invalid'));
}

// ------------------------------------------------ API client and session --

/** The signed-in session: tokens, expiry times (ms since epoch), the user and company. */
let session = null;
let refreshTimer = null;
let refreshInFlight = null;

function saveSession() {
  if (session) sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  else sessionStorage.removeItem(SESSION_KEY);
}

function loadSession() {
  try { return JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null'); } catch { return null; }
}

/** Takes a TokenResponse into the session and schedules the next refresh. */
function acceptTokens(tokens) {
  const now = Date.now();
  session = {
    ...(session || {}),
    access_token: tokens.access_token,
    refresh_token: tokens.refresh_token,
    access_expires_at: now + tokens.expires_in * 1000,
    refresh_expires_at: now + tokens.refresh_expires_in * 1000,
  };
  saveSession();
  scheduleRefresh();
}

/** Refreshes a minute (or a fifth of the lifetime, if shorter) before the access token expires. */
function scheduleRefresh() {
  clearTimeout(refreshTimer);
  if (!session) return;
  const lifetime = session.access_expires_at - Date.now();
  const margin = Math.min(60_000, lifetime / 5);
  // setTimeout takes at most 2^31-1 ms (24.8 days); longer delays would fire at once.
  const delay = Math.min(2 ** 31 - 1, Math.max(1000, lifetime - margin));
  refreshTimer = setTimeout(() => refreshTokens().catch(() => {}), delay);
}

/** Exchanges the refresh token for a new pair; concurrent callers share one request. True on success. */
function refreshTokens() {
  if (!session?.refresh_token) return Promise.resolve(false);
  if (!refreshInFlight) {
    refreshInFlight = (async () => {
      try {
        const tokens = await api('POST', '/api/auth/refresh',
          { body: { refresh_token: session.refresh_token }, auth: false });
        acceptTokens(tokens);
        return true;
      } catch (err) {
        if (err.status === 401) endSession('Your session has ended; please log in again.');
        return false;
      } finally {
        refreshInFlight = null;
      }
    })();
  }
  return refreshInFlight;
}

async function readBody(res) {
  if (res.status === 204) return null;
  const text = await res.text();
  if (!text) return null;
  if (/json/.test(res.headers.get('content-type') || '')) {
    try { return JSON.parse(text); } catch { return text; }
  }
  return text;
}

/**
 * Calls the API. Sends the access token; on 401 refreshes once and retries.
 * Resolves with the parsed body; rejects with an ApiError.
 * Options: body (JSON), headers, auth (default true), quiet (do not show in the raw panel).
 */
async function api(method, url, options = {}) {
  const { body, headers = {}, auth = true, quiet = false, retried = false } = options;
  const init = { method, headers: { Accept: 'application/json', ...headers } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (auth && session) init.headers.Authorization = `Bearer ${session.access_token}`;
  const started = performance.now();
  let res;
  try {
    res = await fetch(url, init);
  } catch (err) {
    if (!quiet) recordRaw(method, url, 0, String(err));
    throw new ApiError(0, { title: 'Network error', detail: `the server did not answer (${err.message})` });
  }
  const data = await readBody(res);
  if (!quiet || !res.ok) recordRaw(method, url, res.status, data, Math.round(performance.now() - started));
  if (res.status === 401 && auth && !retried && session) {
    if (await refreshTokens()) return api(method, url, { ...options, retried: true });
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

const isAdmin = () => session?.user?.role === 'ADMIN';

/** Loads who we are after log-in, then shows the app. */
async function startSession(tokens, known = {}) {
  acceptTokens(tokens);
  session.user = known.user || await api('GET', '/api/auth/me');
  if (!known.company) {
    const companies = await api('GET', '/api/companies');
    known.company = companies[0];
  }
  session.company = known.company;
  saveSession();
  showSignedIn();
}

/** Forgets the session locally (the server side is revoked by logout). */
function endSession(message) {
  clearTimeout(refreshTimer);
  session = null;
  saveSession();
  leaveCurrentView();
  showSignedOut();
  if (message) flash(message);
}

async function logout() {
  const refreshToken = session?.refresh_token;
  if (refreshToken) {
    await api('POST', '/api/auth/logout', { body: { refresh_token: refreshToken }, auth: false }).catch(() => {});
  }
  endSession('Logged out.');
}

function showSignedIn() {
  $('#flash').hidden = true;
  $('#auth-view').hidden = true;
  $('#app-view').hidden = false;
  $('#logout').hidden = false;
  const who = $('#who');
  fill(who, h('strong', {}, session.user.username), ` · ${session.user.role}`,
    session.company ? h('span', { class: 'company' }, ` · ${session.company.name}`) : null);
  who.hidden = false;
  $$('[data-admin-only]').forEach((el) => { el.hidden = !isAdmin(); });
  route();
}

function showSignedOut() {
  $('#auth-view').hidden = false;
  $('#app-view').hidden = true;
  $('#logout').hidden = true;
  $('#who').hidden = true;
}

function formData(form) {
  return Object.fromEntries(new FormData(form).entries());
}

function setupAuthForms() {
  const login = $('#login-form');
  login.addEventListener('submit', async (event) => {
    event.preventDefault();
    const box = $('.form-problem', login);
    clearProblem(box);
    const { username, password } = formData(login);
    try {
      const tokens = await api('POST', '/api/auth/login', { body: { username, password }, auth: false });
      login.reset();
      await startSession(tokens);
    } catch (err) { showProblem(box, err); }
  });

  const register = $('#register-form');
  register.addEventListener('submit', async (event) => {
    event.preventDefault();
    const box = $('.form-problem', register);
    clearProblem(box);
    try {
      const res = await api('POST', '/api/auth/register', { body: formData(register), auth: false });
      register.reset();
      await startSession(res.tokens, { user: res.user, company: res.company });
      flash(`Company ${res.company.name} registered; you are its ADMIN.`);
    } catch (err) { showProblem(box, err); }
  });

  $('#logout').addEventListener('click', logout);
}

// --------------------------------------------------------------- routing --

// The URL hash chooses the view: #/tickets, #/tickets/new, #/tickets/<id>,
// #/integrations, #/users, #/audit, #/queue. A view may register a cleanup
// (stop a stream or a timer) that runs when the view changes.
let viewCleanup = null;

function leaveCurrentView() {
  if (viewCleanup) viewCleanup();
  viewCleanup = null;
}

function route() {
  if (!session) return;
  leaveCurrentView();
  const [tab = 'tickets', sub] = location.hash.replace(/^#\/?/, '').split('/');
  const adminTabs = ['audit', 'queue'];
  const known = ['tickets', 'integrations', 'users', ...adminTabs];
  if (!known.includes(tab) || (adminTabs.includes(tab) && !isAdmin())) {
    location.hash = '#/tickets';
    return;
  }
  $$('#tabs a').forEach((a) => a.classList.toggle('active', a.dataset.tab === tab));
  $$('.tab').forEach((s) => { s.hidden = s.id !== `tab-${tab}`; });
  const views = {
    tickets: () => (sub === 'new' ? showTicketForm() : sub ? showTicket(sub) : showTicketList()),
    integrations: showIntegrations,
    users: showUsers,
    audit: showAudit,
    queue: showQueue,
  };
  views[tab]();
}

// --------------------------------------------------------- tickets: list --

// Keyset paging: cursors[i] is the cursor that fetches page i (null = first).
const ticketList = { cursors: [null], page: 0, nextCursor: null };

function showTicketPane(which) {
  $('#tickets-list-pane').hidden = which !== 'list';
  $('#ticket-form').hidden = which !== 'form';
  $('#ticket-detail').hidden = which !== 'detail';
}

function showTicketList() {
  showTicketPane('list');
  loadTickets();
}

async function loadTickets() {
  const box = $('#tickets-problem');
  clearProblem(box);
  const params = new URLSearchParams({ limit: $('#tickets-limit').value });
  const status = $('#tickets-status').value;
  if (status) params.set('status', status);
  const cursor = ticketList.cursors[ticketList.page];
  if (cursor) params.set('cursor', cursor);
  try {
    const page = await api('GET', `/api/tickets?${params}`);
    ticketList.nextCursor = page.next_cursor;
    fill($('#tickets-table'), table([
      { label: 'Subject', class: 'wrap', cell: (t) => h('a', { href: `#/tickets/${t.id}` }, t.subject) },
      { label: 'Status', cell: (t) => badge(t.status) },
      { label: 'Created', cell: (t) => fmtTime(t.created_at) },
      { label: 'Finished', cell: (t) => fmtTime(t.executed_at) },
      { label: 'Reason', class: 'wrap', cell: (t) => t.status_reason || '' },
    ], page.items, { empty: status ? `No ${status} tickets.` : 'No tickets yet: create one with “New ticket”.' }));
  } catch (err) {
    showProblem(box, err);
  }
  $('#tickets-prev').disabled = ticketList.page === 0;
  $('#tickets-next').disabled = !ticketList.nextCursor;
  $('#tickets-page').textContent = `page ${ticketList.page + 1}`;
}

function resetTicketPaging() {
  ticketList.cursors = [null];
  ticketList.page = 0;
}

function setupTicketList() {
  $('#tickets-status').addEventListener('change', () => { resetTicketPaging(); loadTickets(); });
  $('#tickets-limit').addEventListener('change', () => { resetTicketPaging(); loadTickets(); });
  $('#tickets-refresh').addEventListener('click', loadTickets);
  $('#tickets-prev').addEventListener('click', () => { ticketList.page -= 1; loadTickets(); });
  $('#tickets-next').addEventListener('click', () => {
    ticketList.cursors[ticketList.page + 1] = ticketList.nextCursor;
    ticketList.page += 1;
    loadTickets();
  });
}

// --------------------------------------------------------- tickets: form --

let formIntegrations = [];
let ticketIdempotencyKey = null;

async function showTicketForm() {
  showTicketPane('form');
  const form = $('#ticket-form');
  form.reset();
  clearProblem($('.form-problem', form));
  $('#action-rows').replaceChildren();
  // One key per filled-in form: a double submit or a retried request cannot make two tickets.
  ticketIdempotencyKey = newIdempotencyKey();
  try {
    formIntegrations = (await api('GET', '/api/integrations?limit=200')).items;
  } catch (err) {
    formIntegrations = [];
    showProblem($('.form-problem', form), err);
  }
  $('#ticket-form-no-integrations').hidden = formIntegrations.length > 0;
  $('#add-action').hidden = formIntegrations.length === 0;
  if (formIntegrations.length) addActionRow();
  $('input[name=subject]', form).focus();
}

function integrationLabel(it) {
  return `${it.name} (${CATALOGUE[it.provider]?.label || it.provider}, ${it.mode})`;
}

/** Adds one action to the builder: integration → action → params JSON. */
function addActionRow() {
  const rows = $('#action-rows');
  const integration = h('select', { class: 'action-integration' },
    formIntegrations.map((it) => h('option', { value: it.id }, integrationLabel(it))));
  const action = h('select', { class: 'action-name' });
  const summary = h('small', { class: 'action-summary' });
  const params = h('textarea', { class: 'action-params code', rows: 4, spellcheck: 'false' });
  const attempts = h('input', { class: 'action-attempts', type: 'number', min: 1, max: 100, placeholder: 'default' });
  const row = h('fieldset', { class: 'action-row' },
    h('legend', {}, ''),
    h('div', { class: 'grid2' },
      h('label', { class: 'field-integration' }, 'Integration ', integration),
      h('label', { class: 'field-action' }, 'Action ', action)),
    summary,
    h('label', { class: 'field-params' }, 'Params (JSON) ', params),
    h('div', { class: 'row-end' },
      h('label', { class: 'inline field-max-attempts' }, 'Max attempts ', attempts),
      h('button', { type: 'button', class: 'secondary small', onclick: () => { row.remove(); renumberActionRows(); } }, 'Remove')));

  const fillActions = () => {
    const provider = formIntegrations.find((it) => it.id === integration.value)?.provider;
    const actions = Object.keys(CATALOGUE[provider]?.actions || {});
    fill(action, actions.map((name) => h('option', { value: name }, name)));
    fillParams();
  };
  const fillParams = () => {
    const provider = formIntegrations.find((it) => it.id === integration.value)?.provider;
    const spec = CATALOGUE[provider]?.actions[action.value];
    summary.textContent = spec ? spec.summary : '';
    params.value = JSON.stringify(spec ? spec.example : {}, null, 2);
    params.rows = Math.min(12, params.value.split('\n').length + 1);
  };
  integration.addEventListener('change', fillActions);
  action.addEventListener('change', fillParams);
  rows.append(row);
  fillActions();
  renumberActionRows();
}

/** Keeps legends and data-field paths (actions[i].…) in step with the order. */
function renumberActionRows() {
  $$('#action-rows .action-row').forEach((row, i) => {
    $('legend', row).textContent = `Action ${i + 1}`;
    row.dataset.field = `actions[${i}]`;
    $('.field-integration', row).dataset.field = `actions[${i}].integration_id`;
    $('.field-action', row).dataset.field = `actions[${i}].action`;
    $('.field-params', row).dataset.field = `actions[${i}].params`;
    $('.field-max-attempts', row).dataset.field = `actions[${i}].max_attempts`;
  });
}

/** Reads the builder into the request's actions; a params box that is not JSON is a local problem. */
function collectActions() {
  return $$('#action-rows .action-row').map((row, i) => {
    let params;
    try {
      params = JSON.parse($('.action-params', row).value || '{}');
    } catch (err) {
      throw new ApiError(0, { title: 'Invalid JSON', detail: `params are not JSON: ${err.message}`, field: `actions[${i}].params` });
    }
    const action = {
      integration_id: $('.action-integration', row).value,
      action: $('.action-name', row).value,
      params,
    };
    const attempts = $('.action-attempts', row).value;
    if (attempts) action.max_attempts = Number(attempts);
    return action;
  });
}

function setupTicketForm() {
  const form = $('#ticket-form');
  $('#add-action').addEventListener('click', addActionRow);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const box = $('.form-problem', form);
    clearProblem(box);
    const button = $('button[type=submit]', form);
    button.disabled = true;
    try {
      const { subject, description } = formData(form);
      const body = { subject, description, actions: collectActions() };
      const ticket = await api('POST', '/api/tickets', { body, headers: { 'Idempotency-Key': ticketIdempotencyKey } });
      flash('Ticket created.');
      location.hash = `#/tickets/${ticket.id}`;
    } catch (err) {
      showProblem(box, err);
    } finally {
      button.disabled = false;
    }
  });
}

// ------------------------------------------------------- tickets: detail --

/** Shows one ticket (fetched, unless just `loaded`) and follows it live until it is terminal. */
async function showTicket(id, loaded = null) {
  showTicketPane('detail');
  const controller = new AbortController();
  viewCleanup = () => controller.abort();
  const pane = $('#ticket-detail');
  fill(pane, h('p', { class: 'hint' }, 'Loading…'));
  let ticket = loaded;
  try {
    ticket ??= await api('GET', `/api/tickets/${id}`);
  } catch (err) {
    const box = h('div', { class: 'form-problem' });
    fill(pane, h('a', { href: '#/tickets' }, '← All tickets'), box);
    showProblem(box, err);
    return;
  }
  if (controller.signal.aborted) return; // the user moved on meanwhile
  const terminal = TERMINAL_TICKET_STATUSES.includes(ticket.status);
  renderTicket(ticket, terminal ? 'final' : 'connecting');
  if (!terminal) followTicket(id, controller.signal);
}

/** Keeps a live stream open (reconnecting after drops) until the ticket is terminal or the view changes. */
async function followTicket(id, signal) {
  let latest = null;
  while (!signal.aborted) {
    try {
      await streamTicketEvents(id, signal, (ticket) => {
        latest = ticket;
        const done = TERMINAL_TICKET_STATUSES.includes(ticket.status);
        renderTicket(ticket, done ? 'final' : 'live');
      });
      if (latest && TERMINAL_TICKET_STATUSES.includes(latest.status)) return;
    } catch (err) {
      if (signal.aborted) return;
      if (err.status === 404) { flash('The ticket was deleted.'); return; }
      if (latest) renderTicket(latest, 'reconnecting');
    }
    await sleep(2000, signal);
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

/**
 * Reads GET /api/tickets/{id}/events with fetch, so the Authorization header
 * can be sent (EventSource cannot), and parses the server-sent events by hand.
 * Calls onTicket with each `ticket` event's JSON; resolves when the stream ends.
 */
async function streamTicketEvents(id, signal, onTicket, retried = false) {
  const url = `/api/tickets/${id}/events`;
  const res = await fetch(url, {
    headers: { Accept: 'text/event-stream', Authorization: `Bearer ${session.access_token}` },
    signal,
  });
  if (res.status === 401 && !retried && await refreshTokens()) {
    return streamTicketEvents(id, signal, onTicket, true);
  }
  if (!res.ok) {
    const body = await readBody(res);
    recordRaw('GET', url, res.status, body);
    throw new ApiError(res.status, body);
  }
  recordRaw('GET', url, res.status, '(text/event-stream: the ticket view follows it live)');
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, '\n');
    // Events are separated by a blank line.
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = parseSseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (event?.type === 'ticket') onTicket(JSON.parse(event.data));
    }
  }
}

/** One SSE event block → {type, data}; null for comments-only blocks (keep-alives). */
function parseSseEvent(block) {
  let type = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') type = value;
    else if (field === 'data') data.push(value);
  }
  return data.length ? { type, data: data.join('\n') } : null;
}

const LIVE_LABELS = {
  connecting: 'connecting…',
  live: '● live',
  reconnecting: 'reconnecting…',
  final: 'final',
};

function renderTicket(ticket, liveState) {
  const pane = $('#ticket-detail');
  const pending = ticket.status === 'PENDING';
  const canDelete = isAdmin() || (pending && ticket.created_by_user_id === session.user.id);
  fill(pane,
    h('div', { class: 'toolbar' },
      h('a', { href: '#/tickets' }, '← All tickets'),
      h('span', { class: `live live-${liveState}`, title: 'Progress is streamed from /api/tickets/{id}/events' }, LIVE_LABELS[liveState])),
    h('div', { class: 'card ticket-head' },
      h('div', { class: 'ticket-title' }, h('h2', {}, ticket.subject), badge(ticket.status)),
      ticket.description ? h('p', { class: 'description' }, ticket.description) : null,
      ticket.status_reason ? h('p', { class: `reason reason-${ticket.status.toLowerCase()}` }, h('strong', {}, 'Reason: '), ticket.status_reason) : null,
      h('dl', { class: 'meta' },
        h('dt', {}, 'Id'), h('dd', {}, h('code', {}, ticket.id)),
        h('dt', {}, 'Created'), h('dd', {}, fmtTime(ticket.created_at)),
        h('dt', {}, 'Finished'), h('dd', {}, fmtTime(ticket.executed_at) || '–')),
      h('div', { class: 'form-buttons' },
        pending ? h('button', { type: 'button', class: 'secondary', onclick: () => editTicket(ticket) }, 'Edit') : null,
        pending && isAdmin() ? h('button', { type: 'button', class: 'secondary', onclick: () => deriveTicket(ticket) }, 'Hand to a human (DERIVED)') : null,
        canDelete ? h('button', { type: 'button', class: 'danger', onclick: () => deleteTicket(ticket) }, 'Delete') : null),
      h('div', { class: 'form-problem', id: 'ticket-problem', hidden: true })),
    h('h3', {}, `Actions (${ticket.actions?.length || 0})`),
    ticket.actions?.length
      ? h('ol', { class: 'actions' }, ticket.actions.map(renderAction))
      : h('p', { class: 'empty' }, 'No actions: this ticket waits for a human.'));
}

function renderAction(a) {
  const item = (label, value) => (value === null || value === undefined || value === ''
    ? null : [h('dt', {}, label), h('dd', {}, value)]);
  return h('li', { class: `card action status-border-${a.status.toLowerCase()}`, 'data-action-id': a.id },
    h('div', { class: 'action-title' },
      h('span', {}, h('strong', {}, `${a.position + 1}. ${CATALOGUE[a.provider]?.label || a.provider}`), ' · ', h('code', {}, a.action)),
      badge(a.status)),
    h('dl', { class: 'meta' },
      item('Attempts', `${a.attempts} / ${a.max_attempts}`),
      item('Started', fmtTime(a.started_at)),
      item('Finished', fmtTime(a.finished_at)),
      item('Next attempt', fmtTime(a.next_attempt_at)),
      item('Job id', h('code', {}, a.id))),
    h('details', { class: 'params' }, h('summary', {}, 'Params'), jsonBlock(a.params)),
    a.last_error ? h('div', { class: 'last-error' }, h('strong', {}, 'Last error: '), a.last_error) : null,
    a.result !== null && a.result !== undefined
      ? h('div', { class: 'result' }, h('div', { class: 'label' }, 'Result'), jsonBlock(a.result))
      : null);
}

async function editTicket(ticket) {
  const subject = prompt('Subject', ticket.subject);
  if (subject === null) return;
  const description = prompt('Description', ticket.description);
  if (description === null) return;
  await ticketChange(() => api('PUT', `/api/tickets/${ticket.id}`, { body: { subject, description } }), 'Ticket updated.');
}

async function deriveTicket(ticket) {
  const reason = prompt('Why does a human take this ticket over?');
  if (!reason) return;
  await ticketChange(() => api('PUT', `/api/tickets/${ticket.id}`, { body: { status: 'DERIVED', status_reason: reason } }), 'Ticket handed to a human.');
}

async function deleteTicket(ticket) {
  if (!confirm(`Delete ticket “${ticket.subject}”?`)) return;
  try {
    await api('DELETE', `/api/tickets/${ticket.id}`);
    flash('Ticket deleted.');
    location.hash = '#/tickets';
  } catch (err) { showProblem($('#ticket-problem'), err); }
}

/** Runs a change of the shown ticket, then shows the answer (restarting the live stream if needed). */
async function ticketChange(call, message) {
  try {
    const updated = await call();
    flash(message);
    leaveCurrentView();
    showTicket(updated.id, updated);
  } catch (err) { showProblem($('#ticket-problem'), err); }
}

// ---------------------------------------------------------- integrations --

let integrations = [];
let editingIntegration = null;

async function showIntegrations() {
  hideIntegrationForm();
  $('#credentials-view').hidden = true;
  await loadIntegrations();
}

async function loadIntegrations() {
  const box = $('#integrations-problem');
  clearProblem(box);
  try {
    integrations = (await api('GET', '/api/integrations?limit=200')).items;
  } catch (err) { showProblem(box, err); return; }
  const admin = isAdmin();
  fill($('#integrations-table'), table([
    { label: 'Name', class: 'wrap', cell: (it) => h('strong', {}, it.name) },
    { label: 'Provider', cell: (it) => CATALOGUE[it.provider]?.label || it.provider },
    { label: 'Mode', cell: (it) => h('span', { class: `badge mode-${it.mode}` }, it.mode) },
    { label: 'Base URL', class: 'wrap', cell: (it) => it.settings?.base_url || '–' },
    { label: 'Credentials', cell: (it) => (it.has_credentials ? 'stored' : 'none') },
    { label: 'Updated', cell: (it) => fmtTime(it.updated_at) },
    admin ? {
      label: '',
      class: 'buttons',
      cell: (it) => [
        h('button', { type: 'button', class: 'secondary small', onclick: () => openIntegrationForm(it) }, 'Edit'),
        it.has_credentials ? h('button', { type: 'button', class: 'secondary small', onclick: () => viewCredentials(it) }, 'Credentials') : null,
        h('button', { type: 'button', class: 'danger small', onclick: () => deleteIntegration(it) }, 'Delete'),
      ],
    } : null,
  ].filter(Boolean), integrations, { empty: admin ? 'No integrations yet: create one with “New integration”.' : 'No integrations yet.' }));
}

function hideIntegrationForm() {
  $('#integration-form').hidden = true;
  editingIntegration = null;
}

/** Opens the form empty (new) or filled with `it` (edit: provider fixed, credentials optional). */
function openIntegrationForm(it = null) {
  const form = $('#integration-form');
  form.reset();
  clearProblem($('.form-problem', form));
  editingIntegration = it;
  $('#integration-form-title').textContent = it ? `Edit ${it.name}` : 'New integration';
  form.elements.provider.disabled = Boolean(it);
  if (it) {
    form.elements.provider.value = it.provider;
    form.elements.name.value = it.name;
    form.elements.mode.value = it.mode;
    form.elements.base_url.value = it.settings?.base_url || '';
    form.elements.hec_url.value = it.settings?.hec_url || '';
    form.elements.timeout_secs.value = it.settings?.timeout_secs || '';
    form.elements.simulated_latency_ms.value = it.settings?.simulated_latency_ms ?? '';
    form.elements.skip_tls.checked = it.settings?.verify_tls === false;
  }
  $('#rotate-label').hidden = !it;
  updateIntegrationProviderFields();
  form.hidden = false;
  form.elements.name.focus();
}

/** Shows the settings of the chosen provider and mode, and its credential kinds. */
function updateIntegrationProviderFields() {
  const form = $('#integration-form');
  const provider = form.elements.provider.value;
  $$('[data-provider-only]', form).forEach((el) => { el.hidden = el.dataset.providerOnly !== provider; });
  $$('[data-mode-only]', form).forEach((el) => { el.hidden = el.dataset.modeOnly !== form.elements.mode.value; });
  const kinds = CATALOGUE[provider].credentials;
  const kindSelect = form.elements.credential_kind;
  const previous = kindSelect.value;
  fill(kindSelect, kinds.map((keys) => h('option', { value: keys.join(',') }, keys.join(' + '))));
  if (kinds.some((keys) => keys.join(',') === previous)) kindSelect.value = previous;
  updateCredentialInputs();
}

function updateCredentialInputs() {
  const form = $('#integration-form');
  const rotating = !editingIntegration || form.elements.rotate.checked;
  form.elements.credential_kind.disabled = !rotating;
  const keys = form.elements.credential_kind.value.split(',');
  fill($('#credential-inputs'), keys.map((key) => h('label', { 'data-field': `credentials.${key}` }, key,
    h('input', { name: `cred_${key}`, type: key === 'username' ? 'text' : 'password', autocomplete: 'off', disabled: !rotating }))));
}

/** The request body from the form; settings keep keys the form does not show (ca_cert_pem, …). */
function integrationRequest(form) {
  const f = form.elements;
  const settings = { ...(editingIntegration?.settings || {}) };
  const setOrDelete = (key, value) => { if (value === '' || value === null) delete settings[key]; else settings[key] = value; };
  setOrDelete('base_url', f.base_url.value.trim());
  setOrDelete('hec_url', f.provider.value === 'SPLUNK' ? f.hec_url.value.trim() : '');
  setOrDelete('timeout_secs', f.timeout_secs.value ? Number(f.timeout_secs.value) : '');
  setOrDelete('verify_tls', f.skip_tls.checked ? false : '');
  setOrDelete('simulated_latency_ms', f.mode.value === 'simulated' && f.simulated_latency_ms.value !== ''
    ? Number(f.simulated_latency_ms.value) : '');
  const body = { name: f.name.value.trim(), mode: f.mode.value, settings };
  if (!editingIntegration) body.provider = f.provider.value;
  if (!editingIntegration || f.rotate.checked) {
    const keys = f.credential_kind.value.split(',');
    const credentials = Object.fromEntries(keys.map((k) => [k, f[`cred_${k}`].value]));
    // A new simulated integration may do without credentials.
    const empty = keys.every((k) => !credentials[k]);
    if (!(empty && !editingIntegration && body.mode === 'simulated')) body.credentials = credentials;
  }
  return body;
}

async function deleteIntegration(it) {
  if (!confirm(`Delete integration “${it.name}”? Its stored credentials are removed too.`)) return;
  try {
    await api('DELETE', `/api/integrations/${it.id}`);
    flash(`Integration ${it.name} deleted.`);
    await loadIntegrations();
  } catch (err) { showProblem($('#integrations-problem'), err); }
}

async function viewCredentials(it) {
  const view = $('#credentials-view');
  try {
    const res = await api('GET', `/api/integrations/${it.id}/credentials`);
    fill(view,
      h('div', { class: 'toolbar' }, h('h3', {}, `Credentials of ${it.name}`),
        h('button', { type: 'button', class: 'secondary small', onclick: () => { view.hidden = true; view.replaceChildren(); } }, 'Hide')),
      h('p', { class: 'hint' }, 'Reading them is recorded in the audit log.'),
      jsonBlock(res.credentials));
    view.hidden = false;
  } catch (err) { showProblem($('#integrations-problem'), err); }
}

function setupIntegrations() {
  const form = $('#integration-form');
  $('#integrations-refresh').addEventListener('click', loadIntegrations);
  $('#integrations-new').addEventListener('click', () => openIntegrationForm());
  form.elements.provider.addEventListener('change', updateIntegrationProviderFields);
  $$('[name=mode]', form).forEach((radio) => radio.addEventListener('change', updateIntegrationProviderFields));
  form.elements.credential_kind.addEventListener('change', updateCredentialInputs);
  form.elements.rotate.addEventListener('change', updateCredentialInputs);
  $('[data-cancel]', form).addEventListener('click', hideIntegrationForm);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const box = $('.form-problem', form);
    clearProblem(box);
    try {
      const body = integrationRequest(form);
      const saved = editingIntegration
        ? await api('PUT', `/api/integrations/${editingIntegration.id}`, { body })
        : await api('POST', '/api/integrations', { body });
      flash(`Integration ${saved.name} saved.`);
      hideIntegrationForm();
      await loadIntegrations();
    } catch (err) { showProblem(box, err); }
  });
}

// ----------------------------------------------------------------- users --

let editingUser = null;

async function showUsers() {
  hideUserForm();
  await loadUsers();
}

async function loadUsers() {
  const box = $('#users-problem');
  clearProblem(box);
  let users;
  try {
    users = (await api('GET', '/api/users?limit=200')).items;
  } catch (err) { showProblem(box, err); return; }
  const admin = isAdmin();
  fill($('#users-table'), table([
    { label: 'Username', cell: (u) => [h('strong', {}, u.username), u.id === session.user.id ? h('small', {}, ' (you)') : null] },
    { label: 'Email', class: 'wrap', cell: (u) => u.email },
    { label: 'Role', cell: (u) => h('span', { class: `badge role-${u.role.toLowerCase()}` }, u.role) },
    { label: 'Created', cell: (u) => fmtTime(u.created_at) },
    {
      label: '',
      class: 'buttons',
      // An ADMIN manages everyone; a USER may change its own email and password.
      cell: (u) => [
        admin || u.id === session.user.id ? h('button', { type: 'button', class: 'secondary small', onclick: () => openUserForm(u) }, 'Edit') : null,
        admin && u.id !== session.user.id ? h('button', { type: 'button', class: 'danger small', onclick: () => deleteUser(u) }, 'Delete') : null,
      ],
    },
  ], users));
}

function hideUserForm() {
  $('#user-form').hidden = true;
  editingUser = null;
}

function openUserForm(user = null) {
  const form = $('#user-form');
  form.reset();
  clearProblem($('.form-problem', form));
  editingUser = user;
  $('#user-form-title').textContent = user ? `Edit ${user.username}` : 'New user';
  form.elements.username.disabled = Boolean(user);
  form.elements.username.required = !user;
  form.elements.email.required = !user;
  form.elements.password.required = !user;
  $('#user-password-hint').textContent = user ? 'Leave empty to keep; a new one ends their sessions.' : '12 characters or more.';
  $('[data-role-field]', form).hidden = !isAdmin();
  if (user) {
    form.elements.username.value = user.username;
    form.elements.email.value = user.email;
    form.elements.role.value = user.role;
  }
  form.hidden = false;
  (user ? form.elements.email : form.elements.username).focus();
}

/** Create: every field. Edit: only what changed. */
function userRequest(form) {
  const f = form.elements;
  if (!editingUser) {
    return { username: f.username.value.trim(), email: f.email.value.trim(), password: f.password.value, role: f.role.value };
  }
  const body = {};
  if (f.email.value.trim() !== editingUser.email) body.email = f.email.value.trim();
  if (f.password.value) body.password = f.password.value;
  if (isAdmin() && f.role.value !== editingUser.role) body.role = f.role.value;
  return body;
}

async function deleteUser(user) {
  if (!confirm(`Delete user ${user.username}?`)) return;
  try {
    await api('DELETE', `/api/users/${user.id}`);
    flash(`User ${user.username} deleted.`);
    await loadUsers();
  } catch (err) { showProblem($('#users-problem'), err); }
}

function setupUsers() {
  const form = $('#user-form');
  $('#users-refresh').addEventListener('click', loadUsers);
  $('#users-new').addEventListener('click', () => openUserForm());
  $('[data-cancel]', form).addEventListener('click', hideUserForm);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const box = $('.form-problem', form);
    clearProblem(box);
    try {
      const body = userRequest(form);
      const saved = editingUser
        ? await api('PUT', `/api/users/${editingUser.id}`, { body })
        : await api('POST', '/api/users', { body });
      if (saved.id === session.user.id) { session.user = saved; saveSession(); }
      flash(`User ${saved.username} saved.`);
      hideUserForm();
      await loadUsers();
    } catch (err) { showProblem(box, err); }
  });
}

// ----------------------------------------------------------------- audit --

const auditList = { cursors: [null], page: 0, nextCursor: null };

async function showAudit() {
  await loadAudit();
}

async function loadAudit() {
  const box = $('#audit-problem');
  clearProblem(box);
  const params = new URLSearchParams({ limit: '50' });
  const entity = $('#audit-entity').value;
  if (entity) params.set('entity_type', entity);
  const cursor = auditList.cursors[auditList.page];
  if (cursor) params.set('cursor', cursor);
  try {
    const [page, users] = await Promise.all([
      api('GET', `/api/audit-logs?${params}`),
      api('GET', '/api/users?limit=200', { quiet: true }).then((r) => r.items, () => []),
    ]);
    const names = Object.fromEntries(users.map((u) => [u.id, u.username]));
    auditList.nextCursor = page.next_cursor;
    fill($('#audit-table'), table([
      { label: 'Time', cell: (e) => fmtTime(e.created_at) },
      { label: 'Action', cell: (e) => h('code', {}, e.action) },
      { label: 'Entity', cell: (e) => [e.entity_type, ' ', e.entity_id ? h('code', { title: e.entity_id }, shortId(e.entity_id)) : null] },
      { label: 'Actor', cell: (e) => names[e.actor_user_id] || shortId(e.actor_user_id) || 'system' },
      { label: 'Details', class: 'wrap payload', cell: (e) => h('code', {}, JSON.stringify(e.payload)) },
    ], page.items, { empty: 'No audit events match.' }));
  } catch (err) { showProblem(box, err); }
  $('#audit-prev').disabled = auditList.page === 0;
  $('#audit-next').disabled = !auditList.nextCursor;
  $('#audit-page').textContent = `page ${auditList.page + 1}`;
}

function setupAudit() {
  const reset = () => { auditList.cursors = [null]; auditList.page = 0; loadAudit(); };
  $('#audit-entity').addEventListener('change', reset);
  $('#audit-refresh').addEventListener('click', loadAudit);
  $('#audit-prev').addEventListener('click', () => { auditList.page -= 1; loadAudit(); });
  $('#audit-next').addEventListener('click', () => {
    auditList.cursors[auditList.page + 1] = auditList.nextCursor;
    auditList.page += 1;
    loadAudit();
  });
}

// ----------------------------------------------------------------- queue --

// GET /api/queue/stats and GET /api/jobs, refreshed every few seconds while
// the tab is open. A 404 means this server has no jobs API yet.
const jobList = { cursors: [null], page: 0, nextCursor: null };
// `generation` makes an older, still-running poll drop its follow-up timer.
const queuePoll = { timer: null, generation: 0 };

function showQueue() {
  viewCleanup = stopQueuePolling;
  pollQueue({ quiet: false });
}

function stopQueuePolling() {
  clearTimeout(queuePoll.timer);
  queuePoll.generation += 1;
}

/** Loads stats and jobs now, then again every QUEUE_REFRESH_MS while auto-refresh is on. */
async function pollQueue({ quiet = true } = {}) {
  clearTimeout(queuePoll.timer);
  const generation = ++queuePoll.generation;
  await loadQueue({ quiet });
  if (generation === queuePoll.generation && $('#queue-auto').checked) {
    queuePoll.timer = setTimeout(() => pollQueue(), QUEUE_REFRESH_MS);
  }
}

async function loadQueue({ quiet }) {
  const box = $('#queue-problem');
  const params = new URLSearchParams({ limit: '25' });
  for (const [key, el] of [['status', '#jobs-status'], ['provider', '#jobs-provider'], ['ticket_id', '#jobs-ticket']]) {
    const value = $(el).value.trim();
    if (value) params.set(key, value);
  }
  const cursor = jobList.cursors[jobList.page];
  if (cursor) params.set('cursor', cursor);
  try {
    const [stats, jobs] = await Promise.all([
      api('GET', '/api/queue/stats', { quiet }),
      api('GET', `/api/jobs?${params}`, { quiet }),
    ]);
    clearProblem(box);
    renderQueueStats(stats);
    renderJobs(jobs);
    $('#queue-updated').textContent = `updated ${fmtTime(new Date().toISOString()).slice(11)}`;
  } catch (err) {
    if (err.status === 404) {
      $('#queue-auto').checked = false;
      err = new ApiError(404, {
        title: 'Queue API not available',
        detail: 'This server does not offer GET /api/jobs and /api/queue/stats yet. Press Refresh once it does.',
      });
    }
    showProblem(box, err);
  }
  $('#jobs-prev').disabled = jobList.page === 0;
  $('#jobs-next').disabled = !jobList.nextCursor;
  $('#jobs-page').textContent = `page ${jobList.page + 1}`;
}

function renderQueueStats(stats) {
  const statuses = ['PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'DERIVED', 'CANCELLED'];
  const windowStat = (label, w) => h('div', { class: 'stat' },
    h('div', { class: 'stat-label' }, label),
    h('div', { class: 'stat-value small' }, `${w?.succeeded ?? 0} ok · ${w?.failed ?? 0} failed`),
    h('div', { class: 'stat-sub' },
      `${Number(w?.throughput_per_min ?? 0).toFixed(1)}/min · ${(100 * Number(w?.failure_rate ?? 0)).toFixed(0)}% failures`));
  const providers = Object.entries(stats.by_provider || {});
  fill($('#queue-stats'),
    h('div', { class: 'stats' },
      statuses.map((s) => h('div', { class: `stat stat-${s.toLowerCase()}` },
        h('div', { class: 'stat-label' }, s), h('div', { class: 'stat-value' }, stats.by_status?.[s] ?? 0))),
      h('div', { class: 'stat' }, h('div', { class: 'stat-label' }, 'Oldest pending'),
        h('div', { class: 'stat-value' }, fmtDuration(stats.oldest_pending_age_secs)))),
    h('div', { class: 'stats wide' },
      windowStat('Last 5 min', stats.last_5m),
      windowStat('Last 60 min', stats.last_60m)),
    providers.length ? table([
      { label: 'Provider', cell: ([p]) => CATALOGUE[p]?.label || p },
      ...statuses.map((s) => ({ label: s, cell: ([, counts]) => counts[s] ?? 0 })),
    ], providers) : null);
}

function renderJobs(page) {
  jobList.nextCursor = page.next_cursor;
  fill($('#jobs-table'), table([
    { label: 'Ticket', class: 'wrap', cell: (j) => h('a', { href: `#/tickets/${j.ticket_id}` }, j.ticket_subject || shortId(j.ticket_id)) },
    { label: 'Action', cell: (j) => [`${j.position + 1}. ${CATALOGUE[j.provider]?.label || j.provider} `, h('code', {}, j.action)] },
    { label: 'Status', cell: (j) => badge(j.status) },
    { label: 'Attempts', cell: (j) => `${j.attempts} / ${j.max_attempts}` },
    { label: 'Last error', class: 'wrap error-cell', cell: (j) => j.last_error || '' },
    { label: 'When', cell: (j) => (j.next_attempt_at && j.status === 'PENDING' ? `next ${fmtTime(j.next_attempt_at)}` : fmtTime(j.finished_at || j.started_at || j.created_at)) },
    {
      label: '',
      class: 'buttons',
      cell: (j) => [
        j.status === 'FAILED' ? h('button', { type: 'button', class: 'small', onclick: () => jobCommand(j, 'retry') }, 'Retry') : null,
        j.status === 'PENDING' ? h('button', { type: 'button', class: 'danger small', onclick: () => jobCommand(j, 'cancel') }, 'Cancel') : null,
      ],
    },
  ], page.items, { empty: 'No jobs match.', rowProps: (j) => ({ 'data-job-id': j.id }) }));
}

/** POST /api/jobs/{id}/retry or /cancel, then refresh at once. */
async function jobCommand(job, command) {
  if (command === 'cancel' && !confirm(`Cancel “${job.action}” of “${job.ticket_subject}”? The ticket goes to a human (DERIVED).`)) return;
  try {
    await api('POST', `/api/jobs/${job.id}/${command}`);
    flash(command === 'retry' ? 'Job queued again.' : 'Job cancelled.');
  } catch (err) {
    showProblem($('#queue-problem'), err);
    return;
  }
  pollQueue();
}

function setupQueue() {
  const reload = () => { jobList.cursors = [null]; jobList.page = 0; pollQueue({ quiet: false }); };
  $('#jobs-status').addEventListener('change', reload);
  $('#jobs-provider').addEventListener('change', reload);
  $('#jobs-ticket').addEventListener('change', reload);
  $('#queue-refresh').addEventListener('click', () => pollQueue({ quiet: false }));
  $('#queue-auto').addEventListener('change', () => ($('#queue-auto').checked ? pollQueue() : stopQueuePolling()));
  $('#jobs-prev').addEventListener('click', () => { jobList.page -= 1; pollQueue({ quiet: false }); });
  $('#jobs-next').addEventListener('click', () => {
    jobList.cursors[jobList.page + 1] = jobList.nextCursor;
    jobList.page += 1;
    pollQueue({ quiet: false });
  });
}

// -------------------------------------------------------------- start-up --

/** Restores this tab's session (refreshing an expired access token) or shows the log-in forms. */
async function restoreSession() {
  const saved = loadSession();
  if (!saved?.refresh_token || saved.refresh_expires_at < Date.now()) {
    showSignedOut();
    return;
  }
  session = saved;
  if (session.access_expires_at - Date.now() < 5000 && !(await refreshTokens())) {
    endSession('Please log in again.');
    return;
  }
  scheduleRefresh();
  try {
    session.user = await api('GET', '/api/auth/me');
    saveSession();
    showSignedIn();
  } catch {
    endSession('Please log in again.');
  }
}

/** Editing a field that a problem pointed at takes its red mark away. */
function clearInvalidOnInput(event) {
  event.target.closest('.invalid')?.classList.remove('invalid');
}

function main() {
  document.addEventListener('input', clearInvalidOnInput);
  setupAuthForms();
  setupTicketList();
  setupTicketForm();
  setupIntegrations();
  setupUsers();
  setupAudit();
  setupQueue();
  window.addEventListener('hashchange', route);
  restoreSession();
}

main();
