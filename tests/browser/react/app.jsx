// A React 18 app on the published `driftdb-react` hooks, written as a user of
// the package would. It uses every export: DriftDBProvider, useDatabase,
// useSharedState, useSharedReducer, usePresence, useLatency,
// useConnectionStatus, useUniqueClientId, StatusIndicator and RoomQRCode.
// Bundled in production mode with esbuild (build.js); nothing here knows
// about drifttrio.
//
// Query string:
//   server=URL           base URL of the DriftDB API (required)
//   _driftdb_room=ID     the room (DriftDBProvider's own parameter; without it
//                        the provider creates a room and adds it to the URL)
//   name=NAME            this user's name, shared with usePresence
//   cbor=true            connect in CBOR mode (useBinary)
//
// `window.app` is how the test drives what a user would do by hand (dispatch
// at a pace, open more connections) and reads what the hooks hold.
import React, { useEffect, useRef, useState } from 'react';
import { createRoot } from 'react-dom/client';
import {
  DriftDBProvider,
  RoomQRCode,
  StatusIndicator,
  useConnectionStatus,
  useDatabase,
  useLatency,
  usePresence,
  useSharedReducer,
  useSharedState,
  useUniqueClientId,
} from 'driftdb-react';

const params = new URLSearchParams(window.location.search);
const API = params.get('server');
const NAME = params.get('name') || 'anonymous';
const CBOR = params.get('cbor') === 'true';

// Order-sensitive: the state lists every action in the order the room applied it.
function reduce(state, action) {
  if (action.type === 'add') return { count: state.count + 1, log: [...state.log, action.id] };
  return state;
}
const INITIAL = { count: 0, log: [] };

const app = (window.app = { joiners: [], pending: 0, settled: [] });

/** Resolves once React has committed every state update scheduled before the call. */
app.settle = () => new Promise((resolve) => app.tick(resolve));

function Main() {
  const db = useDatabase();
  const status = useConnectionStatus();
  const latency = useLatency();
  const clientId = useUniqueClientId();
  const [text, setText] = useSharedState('text', '');
  const [state, dispatch] = useSharedReducer('log', reduce, INITIAL);
  const presence = usePresence('users', { name: NAME });
  const [draft, setDraft] = useState('');
  const stateRef = useRef(state);
  stateRef.current = state;

  useEffect(() => {
    app.db = db;
    app.dispatch = dispatch;
    app.state = () => stateRef.current;
  });

  const others = Object.values(presence)
    .map((p) => p.value.name)
    .sort();
  return (
    <div>
      <p>
        Status:{' '}
        <strong id="status" data-connected={String(status.connected)}>
          {status.connected ? 'connected' : 'disconnected'}
        </strong>{' '}
        &middot; latency: <span id="latency">{latency === null ? '' : String(Math.round(latency))}</span>{' '}
        &middot; me: <code id="client-id">{clientId}</code>
      </p>
      <div id="indicator">
        <StatusIndicator />
      </div>
      <fieldset>
        <legend>useSharedState (key text)</legend>
        <p>
          Shared text: <span id="shared-text">{text}</span>
        </p>
        <input id="text-input" value={draft} onChange={(e) => setDraft(e.target.value)} />
        <button id="set-text" onClick={() => setText(draft)}>
          Share
        </button>
      </fieldset>
      <fieldset>
        <legend>useSharedReducer (key log)</legend>
        <p>
          Actions: <span id="count">{state.count}</span>, first: <span id="first">{state.log[0] ?? ''}</span>
        </p>
        <button id="add" onClick={() => dispatch({ type: 'add', id: `${NAME}-click` })}>
          Add
        </button>
        <pre id="reducer">{JSON.stringify(state)}</pre>
      </fieldset>
      <fieldset>
        <legend>usePresence (key users)</legend>
        <ul id="presence">
          {others.map((name) => (
            <li key={name}>{name}</li>
          ))}
        </ul>
      </fieldset>
      <fieldset>
        <legend>More connections to this room (one DriftDBProvider each)</legend>
        <Joiners />
      </fieldset>
      <div id="qr">
        <RoomQRCode />
      </div>
    </div>
  );
}

/** Connections opened on demand (app.join(room)), each a fresh provider with a reducer. */
function Joiners() {
  const [joins, setJoins] = useState([]);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    app.join = (room) => {
      const index = app.joiners.length + app.pending++;
      setJoins((list) => [...list, { index, room }]);
      return index;
    };
    app.leaveAll = () => setJoins([]);
    app.tick = (resolve) => {
      app.settled.push(resolve);
      setTick((t) => t + 1);
    };
  });
  useEffect(() => {
    for (const resolve of app.settled.splice(0)) resolve();
  }, [tick]);
  return (
    <ul id="joiners">
      {joins.map((j) => (
        <DriftDBProvider key={j.index} api={API} room={j.room} useBinary={CBOR}>
          <Joiner index={j.index} />
        </DriftDBProvider>
      ))}
    </ul>
  );
}

function Joiner({ index }) {
  const db = useDatabase();
  const [state] = useSharedReducer('log', reduce, INITIAL);
  const record = useRef(null);
  if (record.current === null) {
    let resolve;
    const firstFrame = new Promise((r) => (resolve = r));
    record.current = app.joiners[index] = { first: null, firstFrame, state: INITIAL, db };
    record.current.resolveFirst = resolve;
    app.pending--;
  }
  record.current.state = state;
  useEffect(() => {
    const onMessage = (message) => {
      if (message.key === 'log' && record.current.first === null) {
        record.current.first = message.type;
        record.current.resolveFirst();
      }
    };
    db.messageListener.addListener(onMessage);
    return () => db.messageListener.removeListener(onMessage);
  }, [db]);
  return (
    <li>
      connection {index}: {state.count} actions, first {String(state.log[0] ?? '')}
    </li>
  );
}

createRoot(document.getElementById('root')).render(
  <DriftDBProvider api={API} useBinary={CBOR}>
    <Main />
  </DriftDBProvider>,
);
