// The REST API (relative URLs, so the dashboard also works behind a path prefix) and its errors.
// Signed in, every request carries `Authorization: Bearer` and the switcher's `namespace`; the
// live stream, which cannot send a header, opens with a single-use ticket.
import { h } from './dom.js';
import { bearer, namespace } from './session.js';

/** An API error: the server's `{"error": {code, message, field, fix}}`. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = error.code;
    this.field = error.field;
    this.fix = error.fix;
    this.details = error.details;
  }
}

/**
 * `api('api/twins', {query: {type: 'pump'}})` -> parsed JSON; throws ApiError on 4xx/5xx.
 * `token` sends that credential instead of the session's (the login page checks one with it);
 * a 401 with the session's credential announces `livetwin:signed-out` (app.js shows the login).
 * `everywhere` leaves out the switcher's namespace.
 */
export async function api(path, { method = 'GET', query, body, type = 'application/json', signal, token, everywhere = false } = {}) {
  const raw = query ? `${path}?${qs(query)}` : path;
  const url = everywhere ? raw : scoped(raw);
  const init = { method, signal, headers: { accept: 'application/json' } };
  const credential = token ?? bearer();
  if (credential) init.headers.authorization = `Bearer ${credential}`;
  if (body !== undefined) {
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
    init.headers['content-type'] = type;
  }
  const response = await fetch(url, init);
  if (response.status === 401 && credential && !token) {
    const error = await response.clone().json().catch(() => null);
    window.dispatchEvent(new CustomEvent('livetwin:signed-out', { detail: error?.error }));
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, data?.error || { message: `HTTP ${response.status} ${response.statusText}` });
  }
  return data;
}

/** `url` with the switcher's `?namespace=` (unless it names one already). */
function scoped(url) {
  const ns = namespace();
  if (!ns || !url.startsWith('api/') || url.startsWith('api/auth/') || /[?&]namespace=/.test(url)) return url;
  return `${url}${url.includes('?') ? '&' : '?'}${qs({ namespace: ns })}`;
}

/** Fetch an `api/...` link (a CSV, an artifact) with the session's credential and save it. */
export async function download(href, filename) {
  const response = await fetch(scoped(href), { headers: { authorization: `Bearer ${bearer()}` } });
  if (!response.ok) {
    const data = await response.json().catch(() => null);
    throw new ApiError(response.status, data?.error || { message: `HTTP ${response.status}` });
  }
  const disposition = response.headers.get('content-disposition') || '';
  const named = /filename="?([^";]+)"?/.exec(disposition)?.[1];
  const url = URL.createObjectURL(await response.blob());
  const a = h('a', { href: url, download: filename || named || href.split('?')[0].split('/').pop() });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** A query string from an object, leaving out empty values. */
export function qs(params) {
  const out = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') out.set(key, value);
  }
  return out.toString();
}

/** `api/twins/<id>`: ids may hold '/', which the server's path route accepts encoded. */
export const twinPath = (id, rest = '') => `api/twins/${encodeURIComponent(id)}${rest}`;

/** The box that shows an error in place: message, the field at fault and the fix. */
export function errorBox(err) {
  const box = h('div', { class: 'error', role: 'alert' }, h('strong', {}, err.message || String(err)));
  if (err.field) box.append(h('div', {}, 'field: ', h('code', {}, err.field)));
  if (err.fix && err.fix !== err.message) box.append(h('div', {}, 'fix: ', err.fix));
  for (const d of err.details || []) {
    box.append(h('div', { class: 'detail' }, d.field ? h('code', {}, d.field) : null, ' ', d.message || d.error || ''));
  }
  return box;
}

/**
 * Server-Sent Events from `api/stream` (`query`: kinds, twin, type) until `signal` aborts.
 * `handlers` maps event names ('state', 'alarm', 'run', 'reset') to functions of the parsed
 * data; `onStatus(text, live)` hears the connection come and go.
 *
 * Signed in, each connection opens with a fresh stream ticket (`POST api/auth/ticket`, single
 * use): the browser's own reconnect would reuse a spent one, so after an error this reconnects
 * itself with a new ticket and `last_event_id`, and misses nothing.
 */
export function listen(query, handlers, signal, onStatus = () => {}) {
  let source = null;
  let lastId = '';
  let retry = null;
  let failures = 0;
  const again = () => {
    clearTimeout(retry);
    retry = setTimeout(open, Math.min(30_000, 1000 * 2 ** failures++));
  };
  async function open() {
    if (signal.aborted) return;
    const params = { ...query, last_event_id: lastId };
    const ticketed = !!bearer();
    if (ticketed) {
      try {
        params.ticket = (await api('api/auth/ticket', { method: 'POST', signal })).ticket;
      } catch (err) {
        if (err.name === 'AbortError' || err.status === 401) return; // 401: the login page takes over
        onStatus('live updates unavailable', false);
        again();
        return;
      }
      if (signal.aborted) return;
    }
    source = new EventSource(scoped(`api/stream?${qs(params)}`));
    source.addEventListener('open', () => {
      failures = 0;
      onStatus('live', true);
    });
    source.addEventListener('error', () => {
      if (ticketed) {
        source.close(); // its ticket is spent: reconnect with a new one
        onStatus('reconnecting…', false);
        again();
      } else {
        onStatus(source.readyState === EventSource.CLOSED ? 'live updates unavailable' : 'reconnecting…', false);
      }
    });
    for (const [name, handler] of Object.entries(handlers)) {
      source.addEventListener(name, (e) => {
        if (e.lastEventId) lastId = e.lastEventId;
        handler(e.data ? JSON.parse(e.data) : null);
      });
    }
  }
  signal.addEventListener('abort', () => {
    clearTimeout(retry);
    source?.close();
  });
  open();
}

/** `fn` once, `ms` after the first of a burst of calls (live refreshes: at most one per `ms`). */
export function coalesce(fn, ms, signal) {
  let timer = null;
  signal?.addEventListener('abort', () => clearTimeout(timer));
  return () => {
    timer ??= setTimeout(() => {
      timer = null;
      fn();
    }, ms);
  };
}
