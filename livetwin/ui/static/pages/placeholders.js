// Pages whose API routes do not exist yet: a clear note, no fake data.
import { h } from '../dom.js';

function placeholder(title, issue, what) {
  return async (root) => {
    root.append(
      h('h1', {}, title),
      h('section', { class: 'card placeholder' },
        h('p', { class: 'notice' }, `Not available yet: this page arrives with the ${issue} issue.`),
        h('p', {}, 'It will show:'),
        h('ul', {}, what.map((w) => h('li', {}, w)))),
    );
  };
}

export const alarms = placeholder('Alarms', 'scheduler/alarms', [
  'open and acknowledged alarms per twin, with the rule that raised them',
  'acknowledge, shelve and clear, and the history of each alarm',
  'the actions they triggered (e-mail, webhook, MQTT command)',
]);

export const jobs = placeholder('Jobs & schedules', 'scheduler/alarms', [
  'triggers (once, interval, cron, on event, on condition) and their next run',
  'running and finished jobs (calibrate, train, predict, simulate, import, back-test) with logs',
]);

export const models = placeholder('Models & lineage', 'model registry and lineage', [
  'registered models and their immutable versions with metadata',
  'the lineage of every run: inputs, outputs, model version, code hash and timing',
]);
