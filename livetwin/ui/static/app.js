// The dashboard's router: hash routes (#/fleet, #/twin/<id>, #/alarms, #/lineage?...) -> pages,
// behind the login page when the server checks credentials (GET api/auth/config says so).
import { api, download, errorBox } from './api.js';
import { h } from './dom.js';
import { finishOidc, renderLogin } from './login.js';
import * as alarms from './pages/alarms.js';
import * as backtests from './pages/backtests.js';
import * as fleet from './pages/fleet.js';
import * as jobs from './pages/jobs.js';
import * as models from './pages/models.js';
import * as twin from './pages/twin.js';
import * as types from './pages/types.js';
import { bearer, clearSession, namespace, session, setNamespace } from './session.js';

const ROUTES = [
  [/^\/(?:fleet)?$/, 'fleet', fleet.render],
  [/^\/twin\/(.+)$/, 'fleet', twin.render],
  [/^\/types$/, 'types', types.renderList],
  [/^\/types\/(.+)$/, 'types', types.renderType],
  [/^\/alarms$/, 'alarms', alarms.render],
  [/^\/jobs$/, 'jobs', jobs.render],
  [/^\/backtests$/, 'backtests', backtests.renderList],
  [/^\/backtests\/(.+)$/, 'backtests', backtests.renderReport],
  [/^\/models$/, 'models', models.renderList],
  [/^\/models\/(.+)$/, 'models', models.renderModel],
  [/^\/lineage$/, 'models', models.renderLineage],
];

let current = null; // the AbortController of the page on screen: aborting it cleans the page up
let config = null; // GET api/auth/config
let signedIn = false; // whether the pages may render (always, when the server checks nothing)

async function route() {
  if (!signedIn) return;
  current?.abort();
  const controller = new AbortController();
  current = controller;
  const view = document.getElementById('view');
  const root = h('div', { class: 'page' });
  view.replaceChildren(root);
  view.removeAttribute('data-ready');

  const raw = location.hash.replace(/^#/, '') || '/fleet';
  const cut = raw.indexOf('?');
  const path = cut < 0 ? raw : raw.slice(0, cut);
  const params = new URLSearchParams(cut < 0 ? '' : raw.slice(cut + 1));
  const match = ROUTES.map(([re, section, render]) => [path.match(re), section, render]).find(([m]) => m);
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', !!match && a.dataset.section === match[1]);
  }
  try {
    if (!match) {
      root.append(h('h1', {}, 'Not found'), h('p', {}, 'No page at ', h('code', {}, path), '. ', h('a', { href: '#/fleet' }, 'Go to the fleet')));
    } else {
      const args = match[0].slice(1).filter((a) => a !== undefined).map(decodeURIComponent);
      await match[2](root, { args, params, signal: controller.signal });
    }
  } catch (err) {
    if (err.name !== 'AbortError') root.append(errorBox(err));
  }
  if (!controller.signal.aborted) view.dataset.ready = '1';
}

/** The login page instead of the pages (nothing else renders until a credential is checked). */
function showLogin(problem = null) {
  signedIn = false;
  current?.abort();
  current = null;
  document.body.classList.add('signed-out');
  document.getElementById('session').replaceChildren();
  const view = document.getElementById('view');
  const root = h('div', { class: 'page' });
  view.replaceChildren(root);
  renderLogin(root, config, (me) => enter(me), problem);
  view.dataset.ready = '1';
}

/** Signed in as `me` (GET api/auth/me): the session bar, then the page of the address bar. */
async function enter(me) {
  document.body.classList.remove('signed-out');
  signedIn = true;
  await sessionBar(me).catch(() => null);
  route();
}

/** Who is signed in, the namespace switcher (credentials with several namespaces), log out. */
async function sessionBar(me) {
  const bar = document.getElementById('session');
  let names = me.namespaces.filter((n) => n !== '*');
  if (me.fleet) {
    const listed = await api('api/types', { everywhere: true }).catch(() => []);
    names = [...new Set([...names, ...listed.map((t) => t.namespace || 'default')])].sort();
  }
  if (namespace() && !names.includes(namespace())) setNamespace('');
  const picker = names.length > 1
    ? h('select', { name: 'namespace', 'aria-label': 'namespace', onchange: (e) => { setNamespace(e.target.value); route(); } },
        h('option', { value: '' }, 'all namespaces'),
        names.map((n) => h('option', { value: n, selected: n === namespace() }, n)))
    : null;
  const who = me.subject
    ? h('span', { class: 'who', title: me.grants.join(' ') }, me.subject, ' · ', me.grants.join(', '))
    : null;
  const logout = me.subject
    ? h('button', { type: 'button', id: 'logout', class: 'secondary', onclick: () => { clearSession(); showLogin(); } }, 'Log out')
    : null;
  bar.replaceChildren(...[picker, who, logout].filter(Boolean));
}

async function start() {
  let problem = null;
  try {
    await finishOidc(); // back from the identity provider: exchange the code, keep the token
  } catch (err) {
    problem = err;
  }
  config = await api('api/auth/config').catch(() => null);
  if (!config?.login) {
    if (session()) clearSession(); // auth is off here: nothing to send
    const me = await api('api/auth/me').catch(() => null);
    if (me) await sessionBar(me).catch(() => null);
    signedIn = true;
    route();
    return;
  }
  if (!bearer()) {
    showLogin(problem);
    return;
  }
  try {
    await enter(await api('api/auth/me'));
  } catch (err) {
    clearSession();
    showLogin(err);
  }
}

// a request answered 401 with the session's credential (expired, revoked): back to the login
window.addEventListener('livetwin:signed-out', (e) => {
  if (!signedIn || !config?.login) return;
  clearSession();
  const why = e.detail;
  showLogin(why ? { message: `You were signed out: ${why.message}`, fix: why.fix } : null);
});

// links into the API (a CSV, an artifact) need the credential too: fetched, then saved
document.addEventListener('click', (e) => {
  const link = e.target.closest?.('a[href^="api/"]');
  if (!link || !bearer() || e.defaultPrevented || e.button !== 0) return;
  e.preventDefault();
  download(link.getAttribute('href'), link.getAttribute('download')).catch((err) => link.after(errorBox(err)));
});

window.addEventListener('hashchange', route);
start();
