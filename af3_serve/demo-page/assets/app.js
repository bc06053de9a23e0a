// The af3-serve demo page: no framework, no build step, only this server's /v1 API.
"use strict";

const SAMPLE_RATE = 16000; // what the model hears; recordings are sent at this rate
const KEY_STORAGE = "af3-api-key";
// Names the conversation for a session-affinity load balancer (vLLM's router, policy
// sticky_least_loaded): its later turns reach the replica that holds its cached audio.
const SESSION_HEADER = "X-Session-ID";
// Live mode speaks OpenAI's Realtime API: 16-bit mono PCM at 24 kHz, sent every 100 ms.
const LIVE_RATE = 24000;
const LIVE_CHUNK_MS = 100;
// Browsers cannot set headers on a WebSocket: the key goes as a subprotocol, as OpenAI's.
const KEY_PROTOCOL = "openai-insecure-api-key.";

// crypto.randomUUID exists only in secure contexts (https, localhost); the page is also
// served over plain http to other hosts.
function newSessionId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const $ = (id) => document.getElementById(id);
const state = {
  messages: [], // the conversation sent with every turn; audio stays in its own turn
  session: newSessionId(), // this conversation's id, sent as SESSION_HEADER
  attached: null, // {blob, name, format, url} for the next turn
  model: null,
  thinkModel: null, // a served model id ending in "-think", if any
  controller: null, // aborts the answer being streamed
  recorder: null,
  live: null, // {socket, stream, context, users, answers} while live mode runs
};

function headers() {
  const key = $("api-key").value.trim();
  const h = { "Content-Type": "application/json" };
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

async function errorMessage(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    message = (await response.json()).error.message || message;
  } catch {
    // not an OpenAI-shaped error: keep the status line
  }
  return response.status === 401 ? `${message} Enter the server's API key above.` : message;
}

async function loadModels() {
  const response = await fetch("v1/models", { headers: headers() });
  if (!response.ok) throw new Error(await errorMessage(response));
  const ids = (await response.json()).data.map((m) => m.id);
  state.thinkModel = ids.find((id) => id.endsWith("-think")) || null;
  state.model = ids.find((id) => !id.endsWith("-think")) || ids[0];
  $("model").textContent = state.model;
  $("think-row").hidden = !state.thinkModel;
  showError("");
}

function readBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

function attach(blob, name) {
  detach();
  const format = (name.match(/\.([a-z0-9]+)$/i)?.[1] || "wav").toLowerCase();
  state.attached = { blob, name, format, url: URL.createObjectURL(blob) };
  $("attachment-name").textContent = name;
  $("attachment-player").src = state.attached.url;
  $("attachment").hidden = false;
}

function detach() {
  // The URL stays valid: the conversation's turn may still play it.
  state.attached = null;
  $("attachment").hidden = true;
  $("attachment-player").removeAttribute("src");
  $("audio-file").value = "";
}

// 16-bit PCM WAV: the server decodes it with libsndfile, which cannot read the
// WebM/Ogg containers MediaRecorder produces in every browser.
function encodeWav(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const ascii = (offset, text) =>
    [...text].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  ascii(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  view.setUint32(16, 16, true); // fmt chunk size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true); // bytes per second
  view.setUint16(32, 2, true); // bytes per frame
  view.setUint16(34, 16, true); // bits per sample
  ascii(36, "data");
  view.setUint32(40, samples.length * 2, true);
  samples.forEach((s, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, s)) * 0x7fff, true));
  return new Blob([view], { type: "audio/wav" });
}

async function recordingToWav(blob) {
  const context = new AudioContext();
  const decoded = await context.decodeAudioData(await blob.arrayBuffer());
  await context.close();
  // An offline mono context at 16 kHz downmixes and resamples in one render.
  const frames = Math.max(1, Math.ceil(decoded.duration * SAMPLE_RATE));
  const offline = new OfflineAudioContext(1, frames, SAMPLE_RATE);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const rendered = await offline.startRendering();
  return encodeWav(rendered.getChannelData(0), SAMPLE_RATE);
}

async function toggleRecording() {
  if (state.recorder) {
    state.recorder.stop();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    // Browsers offer the microphone only to https pages and localhost.
    showError(`No microphone: ${err.message}`);
    return;
  }
  const recorder = new MediaRecorder(stream);
  const chunks = [];
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    state.recorder = null;
    $("record").textContent = "Record";
    $("record").classList.remove("recording");
    try {
      attach(await recordingToWav(new Blob(chunks, { type: recorder.mimeType })), "recording.wav");
    } catch (err) {
      showError(`Could not read the recording: ${err.message}`);
    }
  };
  recorder.start();
  state.recorder = recorder;
  $("record").textContent = "Stop recording";
  $("record").classList.add("recording");
}

function addTurn(role, text, audioUrl) {
  const item = document.createElement("li");
  item.className = `turn ${role}`;
  if (audioUrl) {
    const player = document.createElement("audio");
    player.controls = true;
    player.src = audioUrl;
    item.append(player);
  }
  const body = document.createElement("div");
  body.className = role === "user" ? "text" : "answer";
  body.textContent = text;
  const usage = document.createElement("div");
  usage.className = "usage";
  item.append(body, usage);
  $("conversation").append(item);
  item.scrollIntoView({ block: "end" });
  return { item, body, usage };
}

// Reads the server-sent events of a streamed chat completion into `turn`.
async function streamAnswer(body, session, turn, signal) {
  const response = await fetch("v1/chat/completions", {
    method: "POST",
    headers: { ...headers(), [SESSION_HEADER]: session },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw new Error(await errorMessage(response));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const events = buffer.split(/\r?\n\r?\n/);
    buffer = events.pop(); // an event not complete yet
    for (const event of events) {
      for (const line of event.split(/\r?\n/)) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices?.[0]?.delta?.content;
        if (delta) turn.body.textContent += delta;
        if (chunk.usage) {
          const u = chunk.usage;
          const audio = u.prompt_tokens_details?.audio_tokens ?? 0;
          turn.usage.textContent =
            `${u.prompt_tokens} prompt tokens (${audio} audio), ${u.completion_tokens} generated`;
        }
      }
    }
    turn.item.scrollIntoView({ block: "end" });
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
}

async function send(event) {
  event.preventDefault();
  if (state.controller) return;
  const text = $("question").value.trim();
  const attached = state.attached;
  if (!text && !attached) return;
  showError("");
  try {
    if (!state.model) await loadModels();
  } catch (err) {
    showError(err.message);
    return;
  }
  const think = Boolean(state.thinkModel) && $("think").checked;
  const content = [];
  if (attached) {
    const data = await readBase64(attached.blob);
    content.push({ type: "input_audio", input_audio: { data, format: attached.format } });
  }
  // The "-think" model: the server adds its adapter and AF3's thinking sentence.
  if (text) content.push({ type: "text", text });

  addTurn("user", text, attached?.url);
  $("question").value = "";
  detach();
  const turn = addTurn("assistant", "");
  // This conversation's history, even if "New conversation" replaces it meanwhile.
  const messages = state.messages;
  const session = state.session;
  messages.push({ role: "user", content });
  state.controller = new AbortController();
  setBusy(true);
  try {
    await streamAnswer(
      {
        model: think ? state.thinkModel : state.model,
        messages,
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: Number($("max-tokens").value) || undefined,
        temperature: Number($("temperature").value),
      },
      session,
      turn,
      state.controller.signal,
    );
    messages.push({ role: "assistant", content: turn.body.textContent });
  } catch (err) {
    if (err.name === "AbortError" && turn.body.textContent) {
      // Stopped by the user: what came so far is the answer the model gave.
      messages.push({ role: "assistant", content: turn.body.textContent });
    } else {
      // The turn never happened as far as the model is concerned: out of the history.
      messages.pop();
      turn.item.classList.add("failed");
      turn.usage.textContent = err.name === "AbortError" ? "stopped" : `failed: ${err.message}`;
    }
  } finally {
    state.controller = null;
    setBusy(false);
  }
}

// Live mode ---------------------------------------------------------------------------

function realtimeUrl(model) {
  // Relative, as the page's other calls, so that it works behind a path prefix.
  const url = new URL("v1/realtime", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("model", model);
  return url.href;
}

function liveSession() {
  const maxTokens = Number($("max-tokens").value);
  return {
    type: "session.update",
    session: {
      type: "realtime",
      output_modalities: ["text"],
      ...(maxTokens ? { max_output_tokens: maxTokens } : {}),
      audio: {
        input: {
          format: { type: "audio/pcm", rate: LIVE_RATE },
          transcription: { model: state.model }, // the base model, even in thinking mode
          // The server hears where each turn ends, then transcribes and answers it.
          turn_detection: {
            type: "server_vad",
            silence_duration_ms: 500,
            prefix_padding_ms: 300,
            create_response: true,
          },
        },
      },
    },
  };
}

function base64(buffer) {
  const bytes = new Uint8Array(buffer);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

// The microphone as 16-bit PCM at LIVE_RATE, handed to `send` a chunk at a time.
async function captureMicrophone(stream, send) {
  let context = new AudioContext({ sampleRate: LIVE_RATE });
  let source;
  try {
    source = context.createMediaStreamSource(stream);
  } catch {
    // Some browsers take a microphone only at its own rate: then the worklet resamples.
    await context.close();
    context = new AudioContext();
    source = context.createMediaStreamSource(stream);
  }
  try {
    await context.audioWorklet.addModule("demo/mic-worklet.js");
    const node = new AudioWorkletNode(context, "mic-capture", {
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: "explicit", // stereo microphones are mixed down
      processorOptions: { rate: LIVE_RATE, chunkMs: LIVE_CHUNK_MS },
    });
    node.port.onmessage = (e) => send(e.data);
    source.connect(node);
    await context.resume();
  } catch (err) {
    context.close();
    throw err;
  }
  return context;
}

function setLiveStatus(text, speaking) {
  $("live-status").textContent = text;
  $("live-status").classList.toggle("speaking", speaking);
}

// A turn's place in the conversation, made when the server first names it: a user turn by
// its item, an answer by its response.
function liveTurn(turns, role, id) {
  if (!turns.has(id)) {
    const turn = addTurn(role, "");
    turn.item.classList.add("live");
    turns.set(id, turn);
  }
  return turns.get(id);
}

function showAnswerDone(turn, response) {
  const u = response.usage;
  if (u) {
    const audio = u.input_token_details?.audio_tokens ?? 0;
    turn.usage.textContent =
      `${u.input_tokens} prompt tokens (${audio} audio), ${u.output_tokens} generated`;
  }
  if (response.status === "failed" || response.status === "cancelled") {
    turn.item.classList.add("failed");
    turn.usage.textContent = response.status;
  }
}

function onLiveEvent(live, event) {
  const user = (itemId) => liveTurn(live.users, "user", itemId);
  const answer = (responseId) => liveTurn(live.answers, "assistant", responseId);
  switch (event.type) {
    case "input_audio_buffer.speech_started":
      setLiveStatus("Hearing you", true);
      break;
    case "input_audio_buffer.speech_stopped":
      setLiveStatus("Listening", false);
      break;
    case "input_audio_buffer.committed":
      user(event.item_id);
      break;
    case "conversation.item.added":
      if (event.item.role === "user") user(event.item.id);
      break;
    case "conversation.item.input_audio_transcription.delta":
      user(event.item_id).body.textContent += event.delta;
      break;
    case "conversation.item.input_audio_transcription.completed":
      user(event.item_id).body.textContent = event.transcript;
      break;
    case "conversation.item.input_audio_transcription.failed": {
      const turn = user(event.item_id);
      turn.item.classList.add("failed");
      turn.usage.textContent = `not transcribed: ${event.error.message}`;
      break;
    }
    case "response.created":
      answer(event.response.id);
      break;
    case "response.output_text.delta":
      answer(event.response_id).body.textContent += event.delta;
      break;
    case "response.output_text.done":
      answer(event.response_id).body.textContent = event.text;
      break;
    case "response.done":
      showAnswerDone(answer(event.response.id), event.response);
      break;
    case "error": {
      const hint = event.error.code === "invalid_api_key" ? " Enter the server's API key above." : "";
      showError(event.error.message + hint);
      break;
    }
    default:
      return; // session.created and .updated, the item and part events: nothing to show
  }
  $("conversation").lastElementChild?.scrollIntoView({ block: "end" });
}

// The model and the microphone, or null (the error shown).
async function liveStream() {
  try {
    if (!state.model) await loadModels();
  } catch (err) {
    showError(err.message);
    return null;
  }
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    showError(`No microphone: ${err.message}`); // https pages and localhost only
    return null;
  }
}

async function startLive() {
  showError("");
  $("live").disabled = true; // one start at a time
  const stream = await liveStream();
  $("live").disabled = false;
  if (!stream) return;
  const key = $("api-key").value.trim();
  const think = Boolean(state.thinkModel) && $("think").checked;
  let socket;
  try {
    const protocols = key ? ["realtime", KEY_PROTOCOL + key] : ["realtime"];
    socket = new WebSocket(realtimeUrl(think ? state.thinkModel : state.model), protocols);
  } catch (err) {
    stream.getTracks().forEach((t) => t.stop());
    showError(`Could not open the live session: ${err.message}`);
    return;
  }
  const live = { socket, stream, context: null, users: new Map(), answers: new Map() };
  state.live = live;
  $("live").textContent = "Stop live";
  $("live").classList.add("recording");
  $("live-status").hidden = false;
  setLiveStatus("Connecting", false);
  socket.onmessage = (e) => {
    if (state.live === live) onLiveEvent(live, JSON.parse(e.data));
  };
  socket.onclose = (e) => {
    if (state.live !== live) return; // stopped here
    // A refused session said why in an error event first.
    if ($("error").hidden) showError(`The live session closed (${e.code} ${e.reason})`.trim());
    stopLive();
  };
  socket.onopen = async () => {
    socket.send(JSON.stringify(liveSession()));
    setLiveStatus("Listening", false);
    const send = (pcm) => {
      if (socket.readyState !== WebSocket.OPEN) return;
      socket.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64(pcm) }));
    };
    try {
      live.context = await captureMicrophone(stream, send);
      if (state.live !== live) live.context.close(); // stopped meanwhile
    } catch (err) {
      showError(`Could not capture the microphone: ${err.message}`);
      stopLive();
    }
  };
}

// Closes the socket (the server drops what it was still working on) and the microphone.
function stopLive() {
  const live = state.live;
  if (!live) return;
  state.live = null;
  live.socket.close(1000);
  live.stream.getTracks().forEach((t) => t.stop());
  live.context?.close();
  $("live").textContent = "Live";
  $("live").classList.remove("recording");
  $("live-status").hidden = true;
}

function newConversation() {
  stopLive();
  state.controller?.abort();
  state.messages = [];
  state.session = newSessionId();
  $("conversation").replaceChildren();
  showError("");
}

function init() {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("api-key").addEventListener("input", () => {
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    state.model = null; // look again with the new key
  });
  $("api-key").addEventListener("change", () => loadModels().catch((e) => showError(e.message)));
  $("audio-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) attach(file, file.name);
  });
  $("record").addEventListener("click", toggleRecording);
  $("live").addEventListener("click", () => (state.live ? stopLive() : startLive()));
  $("detach").addEventListener("click", detach);
  $("composer").addEventListener("submit", send);
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => state.controller?.abort());
  $("new-chat").addEventListener("click", newConversation);
  loadModels().catch((e) => showError(e.message));
}

init();
