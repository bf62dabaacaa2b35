// The signed-in session, kept in this tab's sessionStorage only (gone when the tab closes; never
// in a URL, never logged): the bearer credential, how it was obtained, when it expires, and the
// namespace picked in the switcher.
const KEY = 'livetwin.session';
const NAMESPACE = 'livetwin.namespace';

function read(key) {
  try {
    return JSON.parse(sessionStorage.getItem(key) || 'null');
  } catch {
    return null;
  }
}

/** The session `{token, via: 'token'|'oidc', expires}` or null (none, or expired). */
export function session() {
  const found = read(KEY);
  if (!found?.token) return null;
  if (found.expires && Date.now() >= found.expires) {
    clearSession();
    return null;
  }
  return found;
}

/** The bearer credential to send, or null when signed out (or when auth is off). */
export const bearer = () => session()?.token ?? null;

export function saveSession(token, via, expires = null) {
  sessionStorage.setItem(KEY, JSON.stringify({ token, via, expires }));
}

/** Log out: forget the credential and the namespace picked with it. */
export function clearSession() {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(NAMESPACE);
}

/** The namespace the switcher picked ('' for all the credentials reach). */
export const namespace = () => read(NAMESPACE) || '';

export function setNamespace(name) {
  if (name) sessionStorage.setItem(NAMESPACE, JSON.stringify(name));
  else sessionStorage.removeItem(NAMESPACE);
}
