// The REST API (relative URLs, so the dashboard also works behind a path prefix) and its errors.
import { h } from './dom.js';

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

/** `api('api/twins', {query: {type: 'pump'}})` -> parsed JSON; throws ApiError on 4xx/5xx. */
export async function api(path, { method = 'GET', query, body, type = 'application/json', signal } = {}) {
  const url = query ? `${path}?${qs(query)}` : path;
  const init = { method, signal, headers: { accept: 'application/json' } };
  if (body !== undefined) {
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
    init.headers['content-type'] = type;
  }
  const response = await fetch(url, init);
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
 */
export function listen(query, handlers, signal, onStatus = () => {}) {
  const source = new EventSource(`api/stream?${qs(query)}`);
  source.addEventListener('open', () => onStatus('live', true));
  source.addEventListener('error', () =>
    onStatus(source.readyState === EventSource.CLOSED ? 'live updates unavailable' : 'reconnecting…', false));
  for (const [name, handler] of Object.entries(handlers)) {
    source.addEventListener(name, (e) => handler(e.data ? JSON.parse(e.data) : null));
  }
  signal.addEventListener('abort', () => source.close());
  return source;
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
