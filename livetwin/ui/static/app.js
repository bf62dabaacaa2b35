// The dashboard's router: hash routes (#/fleet, #/twin/<id>, #/alarms, #/lineage?...) -> pages.
import { errorBox } from './api.js';
import { h } from './dom.js';
import * as alarms from './pages/alarms.js';
import * as backtests from './pages/backtests.js';
import * as fleet from './pages/fleet.js';
import * as jobs from './pages/jobs.js';
import * as models from './pages/models.js';
import * as twin from './pages/twin.js';
import * as types from './pages/types.js';

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

async function route() {
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

window.addEventListener('hashchange', route);
route();
