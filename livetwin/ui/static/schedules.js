// Schedules for people: "daily at 03:00 (Europe/Berlin), next in 9 h", "every 15 s, next in 3 s".
import { fmt } from './dom.js';

const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];
const pad = (n) => String(n).padStart(2, '0');
const number = (field) => (/^\d+$/.test(field) ? Number(field) : null);

/** '850 ms', '15 s', '5 min', '2 h', '1 d' from milliseconds (whole units when they fit). */
export function span(ms) {
  for (const [unit, size] of [['d', 86400e3], ['h', 3600e3], ['min', 60e3], ['s', 1e3]]) {
    if (ms >= size) return `${fmt(Number((ms / size).toPrecision(3)))} ${unit}`;
  }
  return `${fmt(ms)} ms`;
}

/** 'in 9 h', 'in 3 s', 'due now' from an ISO time. */
export function until(iso, now = Date.now()) {
  const ms = Date.parse(iso) - now;
  if (ms <= 1000) return 'due now';
  if (ms < 60e3) return `in ${Math.round(ms / 1e3)} s`;
  if (ms < 3600e3) return `in ${Math.round(ms / 60e3)} min`;
  if (ms < 86400e3) return `in ${Math.round(ms / 3600e3)} h`;
  return `in ${Math.round(ms / 86400e3)} d`;
}

/** A cron expression in words where it is a common one; the expression otherwise. */
export function cronText(expr, tz) {
  const [minute, hour, dom, month, dow, ...rest] = expr.trim().split(/\s+/);
  const zone = tz ? ` (${tz})` : '';
  const m = number(minute);
  const hr = number(hour);
  const d = number(dow);
  const every = /^\*\/(\d+)$/.exec(minute);
  if (!rest.length && dom === '*' && month === '*') {
    if (m !== null && hr !== null && dow === '*') return `daily at ${pad(hr)}:${pad(m)}${zone}`;
    if (m !== null && hr !== null && d !== null && d <= 7) return `every ${DAYS[d % 7]} at ${pad(hr)}:${pad(m)}${zone}`;
    if (m !== null && hour === '*' && dow === '*') return `hourly at :${pad(m)}${zone}`;
    if (every && hour === '*' && dow === '*') return `every ${every[1]} min${zone}`;
    if (minute === '*' && hour === '*' && dow === '*') return 'every minute';
  }
  return `cron ${expr}${zone}`;
}

/** A trigger in words: 'every 15 s', 'daily at 03:00 (Europe/Berlin)', 'on state of pump'. */
export function triggerText(trigger) {
  switch (trigger.kind) {
    case 'interval':
      return `every ${typeof trigger.every === 'number' ? span(trigger.every) : trigger.every}`;
    case 'cron':
      return cronText(trigger.cron, trigger.tz);
    case 'once':
      return trigger.at ? `once at ${new Date(trigger.at).toLocaleString()}` : 'once';
    case 'event':
      return `on ${trigger.on}${trigger.type ? ` of ${trigger.type}` : ''}${trigger.names?.length ? ` (${trigger.names.join(', ')})` : ''}`;
    case 'condition':
      return `when ${trigger.when}${trigger.type ? ` on ${trigger.type}` : ''}`;
    default:
      return trigger.kind;
  }
}

/** A schedule in words with its next run: 'daily at 03:00 (Europe/Berlin), next in 9 h'. */
export function scheduleText(schedule) {
  const text = triggerText(schedule.trigger);
  if (!schedule.enabled) return `${text}, disabled`;
  return schedule.next ? `${text}, next ${until(schedule.next)}` : text;
}
