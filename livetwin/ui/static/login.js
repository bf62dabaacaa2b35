// Signing in: paste an API token, or "Sign in with OIDC" (authorization code + PKCE, as a public
// client, against the issuer GET api/auth/config names). The credential is checked with
// GET api/auth/me before it is kept (session.js).
import { api, errorBox, qs } from './api.js';
import { h } from './dom.js';
import { saveSession } from './session.js';

const PENDING = 'livetwin.oidc'; // the PKCE verifier and state while the identity provider asks

/** The login page in `root`; `onSignedIn(me)` once a credential is checked and kept. */
export function renderLogin(root, config, onSignedIn, problem = null) {
  const token = h('input', {
    type: 'password', name: 'token', autocomplete: 'off', spellcheck: 'false', required: true,
    placeholder: 'lt_…', 'aria-label': 'API token',
  });
  const result = h('div', { class: 'result' }, problem ? errorBox(problem) : null);
  const form = h('form', { class: 'login' },
    h('label', {}, 'API token ', token),
    h('button', { type: 'submit' }, 'Sign in'),
    h('p', { class: 'muted small' }, 'Create one with ', h('code', {}, 'livetwin token create --scope read --namespace <yours>'),
      '. It is kept in this tab only and forgotten when you log out or close the tab.'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const candidate = token.value.trim();
    result.replaceChildren();
    try {
      const me = await api('api/auth/me', { token: candidate });
      saveSession(candidate, 'token');
      token.value = '';
      onSignedIn(me);
    } catch (err) {
      result.replaceChildren(errorBox(err));
    }
  });
  const oidc = config.oidc;
  const oidcPart = oidc.enabled
    ? h('p', {}, h('button', {
        type: 'button', id: 'oidc-login',
        onclick: () => beginOidc(oidc).catch((err) => result.replaceChildren(errorBox(err))),
      }, 'Sign in with OIDC'), ' ', h('span', { class: 'muted small' }, new URL(oidc.issuer).host))
    : oidc.why_not ? h('p', { class: 'muted small' }, `Sign in with OIDC is not set up: ${oidc.why_not}.`) : null;
  root.replaceChildren(h('section', { class: 'card login-card' },
    h('h1', {}, 'Sign in to livetwin'), form, oidcPart, result));
  token.focus();
}

const b64url = (bytes) => btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
const random = (n) => b64url(crypto.getRandomValues(new Uint8Array(n)));
const isJwt = (t) => typeof t === 'string' && t.split('.').length === 3;

async function discover(issuer) {
  const url = `${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
  const response = await fetch(url).catch(() => null);
  if (!response?.ok) {
    throw Object.assign(new Error(`cannot read the identity provider's discovery document at ${url}`), {
      fix: 'check the server\'s --issuer, and that the provider allows this origin (CORS)',
    });
  }
  return response.json();
}

/** Off to the identity provider: PKCE (S256) and state kept in this tab while it asks. */
async function beginOidc(oidc) {
  if (!crypto.subtle) {
    throw Object.assign(new Error('Sign in with OIDC needs HTTPS: the browser offers PKCE hashing only to secure pages'), {
      fix: 'open the dashboard over https:// (serve --tls-cert/--tls-key, or a TLS proxy)',
    });
  }
  const meta = await discover(oidc.issuer);
  const verifier = random(32);
  const challenge = b64url(new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier))));
  const state = random(16);
  const redirect = location.origin + location.pathname;
  sessionStorage.setItem(PENDING, JSON.stringify({
    verifier, state, redirect, hash: location.hash, client: oidc.client_id, tokenUrl: meta.token_endpoint,
  }));
  const params = {
    response_type: 'code', client_id: oidc.client_id, redirect_uri: redirect, scope: oidc.scopes,
    state, code_challenge: challenge, code_challenge_method: 'S256', audience: oidc.audience,
  };
  location.assign(`${meta.authorization_endpoint}?${qs(params)}`);
}

/**
 * Back from the identity provider (`?code=&state=`, or `?error=`): the code leaves the address
 * bar at once and is exchanged (with the PKCE verifier) for a token, which is kept. Returns
 * whether this load was such a return; throws what went wrong.
 */
export async function finishOidc() {
  const params = new URLSearchParams(location.search);
  if (!params.has('code') && !params.has('error')) return false;
  let pending = null;
  try {
    pending = JSON.parse(sessionStorage.getItem(PENDING) || 'null');
  } catch {
    pending = null;
  }
  sessionStorage.removeItem(PENDING);
  history.replaceState(null, '', location.pathname + (pending?.hash || ''));
  if (params.has('error')) {
    throw Object.assign(new Error(`the identity provider refused: ${params.get('error')} ${params.get('error_description') || ''}`.trim()), {
      fix: 'sign in again, or ask your administrator for access',
    });
  }
  if (!pending || params.get('state') !== pending.state) {
    throw Object.assign(new Error('this sign-in answer does not match one started in this tab (state)'), { fix: 'sign in again' });
  }
  const body = new URLSearchParams({
    grant_type: 'authorization_code', code: params.get('code'), redirect_uri: pending.redirect,
    client_id: pending.client, code_verifier: pending.verifier,
  });
  const response = await fetch(pending.tokenUrl, {
    method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body,
  }).catch(() => null);
  const data = response ? await response.json().catch(() => ({})) : {};
  if (!response?.ok) {
    throw Object.assign(new Error(`the identity provider did not exchange the code: ${data.error || 'no answer'} ${data.error_description || ''}`.trim()), {
      fix: 'sign in again',
    });
  }
  // the access token when it is a JWT (its audience: the server's --audience), else the ID token
  const token = isJwt(data.access_token) ? data.access_token : data.id_token;
  if (!isJwt(token)) {
    throw Object.assign(new Error('the identity provider returned no JWT to send to livetwin'), {
      fix: 'configure the provider to issue JWT access tokens for this client',
    });
  }
  const expires = data.expires_in ? Date.now() + Number(data.expires_in) * 1000 : null;
  saveSession(token, 'oidc', expires);
  return true;
}
