// Training commands of the worker (imported by worker.js). Photos and checkpoints stay on this
// device: the autosave lives in this origin's IndexedDB.
//
// Protocol (adds to worker.js's):
//   main -> worker
//     {id, command: "check_photo", name, bytes: Uint8Array}
//     {id, command: "train", params: {token, init_word, vectors, templates, steps, lr, warmup,
//          weight_decay, resolution, flip_p, batch, grad_accum, seed, checkpoint_every, preview_every}
//          /* absent: settings_defaults().train; resolution: the model's size */,
//          photos: [{name, bytes}],
//          autosave_every /* steps, default autosaveInterval(steps) */, resume /* bool: continue the autosave */,
//          preview_every /* steps, 0 = none */, preview_steps /* denoising steps, default 10 */,
//          simulate_device_lost_at /* test hook: fail as a lost GPU device after that step */}
//     {id, command: "train_control", action: "pause" | "resume" | "cancel"}  // answered at once;
//          cancel: the run stops before its next step and is dropped (session.cancel_training(),
//          its GPU memory freed); the autosave stays
//     {id, command: "export_embedding", format: "diffusers" | "a1111" | "a1111-pt" | "a1111-png"}
//     {id, command: "finish_training"}    // the token becomes usable in prompts
//     {id, command: "autosave_info"}      // {exists, step, steps, params, photos: [names], saved_at}
//     {id, command: "clear_autosave"}
//     {id, command: "import_embedding", name, bytes, token?}
//   worker -> main
//     {id, status: "progress", stage: "train", log: {step, loss, lr, grad_norm, row_norms,
//          timesteps, rollback?}, steps, elapsed_ms, eta_ms, autosaved_step}
//     {id, status: "progress", stage: "train_state", state: "preparing" | "running" | "paused"}
//     {id, status: "progress", stage: "train_preview", step, png: Uint8Array}  // preview image
//     {id, status: "result", command: "train", result: {state: "done" | "cancelled", step, steps,
//          tokens, elapsed_ms, library? /* the library entry of the finished embedding */, library_error?}}
//     {id, status: "result", command: "export_embedding", result: {bytes: Uint8Array, format}}

import { idbStore } from "./idb.js";

const dbOp = idbStore("pseudoword", "autosave");

const readAutosave = () => dbOp("readonly", (s) => s.get("current"));
const writeAutosave = (value) => dbOp("readwrite", (s) => s.put(value, "current"));
const clearAutosave = () => dbOp("readwrite", (s) => s.delete("current"));

// Steps between two autosaves, a browser-only rule: the autosave in IndexedDB is what survives a
// reload, a closed tab or a lost GPU device, so at most 10 steps are lost (every step of runs up
// to 20 steps, so a short run can be cancelled and resumed from where it stopped). It is not the
// library's checkpoint_every (the in-memory "last good" state the divergence guard rolls back
// to), which keeps its default (settings_defaults().train.checkpoint_every).
function autosaveInterval(steps) {
  return Math.max(1, Math.min(10, Math.ceil(steps / 20)));
}

export function makeTrainHandlers({ requireSession, plain, maybeAwait, yieldToEventLoop, library }) {
  let job = null; // {paused, cancel, wake}

  function checkPhoto({ id, name, bytes }) {
    const s = requireSession();
    const r = plain(s.check_photo(new Uint8Array(bytes), String(name)));
    postMessage({ id, status: "result", command: "check_photo", result: r });
  }

  async function train(msg) {
    const { id } = msg;
    const s = requireSession();
    let params = msg.params || {};
    let photos = msg.photos || [];
    let checkpoint;
    if (msg.resume) {
      const saved = await readAutosave();
      if (!saved) throw new Error("There is no autosaved training to resume.");
      params = saved.params;
      photos = saved.photos;
      checkpoint = saved.checkpoint;
    }
    if (!photos.length) throw new Error("No training photos: add 3-5 photos of the subject.");
    postMessage({ id, status: "progress", stage: "train_state", state: "preparing" });
    const t0 = performance.now();
    const started = plain(
      await s.start_training(
        params,
        photos.map((p) => new Uint8Array(p.bytes)),
        photos.map((p) => String(p.name)),
        checkpoint ? new Uint8Array(checkpoint) : undefined,
      ),
    );
    const steps = Number(started.steps);
    let step = Number(started.step);
    const autosaveEvery = Math.max(1, Number(msg.autosave_every ?? autosaveInterval(steps)));
    // a run that will not finish (cancelled, failed) is dropped with its GPU memory; the
    // autosave stays for a resume
    const drop = () => {
      try {
        s.cancel_training();
      } catch {
        /* already gone */
      }
    };
    const me = { paused: false, cancel: false, wake: null };
    job = me;
    let autosaved = msg.resume ? step : null;
    const save = async () => {
      const ck = Uint8Array.from(s.training_checkpoint(false));
      await writeAutosave({
        params,
        photos: photos.map((p) => ({ name: p.name, bytes: p.bytes })),
        checkpoint: ck,
        step,
        steps,
        saved_at: Date.now(),
      });
      autosaved = step;
    };
    try {
      if (!msg.resume) await save(); // photos + settings are safe before the first step
      postMessage({ id, status: "progress", stage: "train_state", state: "running" });
      const tRun = performance.now();
      const startStep = step;
      while (step < steps) {
        await yieldToEventLoop();
        if (me.paused && !me.cancel) {
          postMessage({ id, status: "progress", stage: "train_state", state: "paused" });
          await new Promise((resolve) => (me.wake = resolve));
          postMessage({ id, status: "progress", stage: "train_state", state: "running" });
        }
        if (me.cancel) {
          drop();
          postMessage({ id, status: "result", command: "train", result: { state: "cancelled", step, steps, tokens: started.tokens, elapsed_ms: performance.now() - t0 } });
          return;
        }
        const log = plain(await s.train_step());
        step = Number(log.step);
        if (!log.rollback && (step % autosaveEvery === 0 || step >= steps)) await save();
        const previewEvery = Number(msg.preview_every ?? params.preview_every ?? 0);
        if (!log.rollback && previewEvery > 0 && step % previewEvery === 0) {
          const png = Uint8Array.from(await s.training_preview(Number(msg.preview_steps || 10), Number(params.seed || 0)));
          postMessage({ id, status: "progress", stage: "train_preview", step, png }, [png.buffer]);
        }
        const now = performance.now();
        const perStep = (now - tRun) / Math.max(1, step - startStep);
        postMessage({
          id,
          status: "progress",
          stage: "train",
          log,
          steps,
          elapsed_ms: now - t0,
          eta_ms: Math.max(0, steps - step) * perStep,
          autosaved_step: autosaved,
        });
        // test hook: behave as if the GPU device was lost after this step (the autosave is written)
        if (msg.simulate_device_lost_at === step) throw new Error(`GPU device lost after step ${step} (simulated by the test hook)`);
      }
      // the finished embedding goes into the embedding library (a failure there is reported, not fatal)
      const kept = {};
      try {
        kept.library = (await library.addTrained(Uint8Array.from(s.export_embedding("diffusers")), String(started.tokens[0]))).entry;
      } catch (err) {
        kept.library_error = `The embedding could not be kept in the library: ${err && err.message ? err.message : err}`;
      }
      postMessage({ id, status: "result", command: "train", result: { state: "done", step, steps, tokens: started.tokens, elapsed_ms: performance.now() - t0, ...kept } });
    } catch (err) {
      drop();
      // the autosave (last completed save) stays for a reload; say where it is
      const where = autosaved != null ? ` The autosave at step ${autosaved} is kept: reload the page and choose "Resume".` : "";
      throw new Error(`${err && err.message ? err.message : err}${where}`);
    } finally {
      if (job === me) job = null;
    }
  }

  // Answered at once (not queued behind the running "train").
  function control({ id, action }) {
    if (job) {
      if (action === "pause") job.paused = true;
      if (action === "resume" || action === "cancel") {
        job.paused = false;
        if (action === "cancel") job.cancel = true;
        job.wake?.();
        job.wake = null;
      }
    }
    postMessage({ id, status: "result", command: "train_control", result: { running: !!job, action } });
  }

  function exportEmbedding({ id, format }) {
    const s = requireSession();
    const bytes = Uint8Array.from(s.export_embedding(String(format)));
    postMessage({ id, status: "result", command: "export_embedding", result: { bytes, format } }, [bytes.buffer]);
  }

  async function finishTraining({ id }) {
    const s = requireSession();
    const bytes = Uint8Array.from(s.export_embedding("diffusers"));
    const r = plain(s.finish_training());
    await library.noteActive(bytes, String(r.tokens[0]));
    postMessage({ id, status: "result", command: "finish_training", result: r });
  }

  async function autosaveInfo({ id }) {
    const saved = await readAutosave();
    const result = saved
      ? { exists: true, step: saved.step, steps: saved.steps, params: saved.params, photos: saved.photos.map((p) => p.name), saved_at: saved.saved_at }
      : { exists: false };
    postMessage({ id, status: "result", command: "autosave_info", result });
  }

  async function clear({ id }) {
    await clearAutosave();
    postMessage({ id, status: "result", command: "clear_autosave", result: { cleared: true } });
  }

  function importEmbedding({ id, name, bytes, token }) {
    const s = requireSession();
    const r = plain(s.import_embedding(new Uint8Array(bytes), String(name), token ? String(token) : undefined));
    postMessage({ id, status: "result", command: "import_embedding", result: r });
  }

  return {
    queued: {
      check_photo: checkPhoto,
      train,
      export_embedding: exportEmbedding,
      finish_training: finishTraining,
      autosave_info: autosaveInfo,
      clear_autosave: clear,
      import_embedding: importEmbedding,
    },
    immediate: { train_control: control },
    maybeAwait,
  };
}
