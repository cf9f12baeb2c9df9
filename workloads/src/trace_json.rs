//! Chrome trace-event JSON (the format ui.perfetto.dev and chrome://tracing
//! open) from `emu_cpu::trace` events.
//!
//! Layout: one process (pid 1, "mmemu <scenario>") with one thread track
//! per emulated CPU (tid = CPU number, named "CPU<n>" by thread_name
//! metadata).  Slices are complete events ("X"), tlb_flush events are
//! thread-scoped instants ("i") whose args carry the reason and pages,
//! IPIs are flow events ("s" on the sender inside its
//! smp_call_function_many slice, "f" bound to the target's IPI slice).
//! Timestamps are microseconds since the run started.

use std::io::Write;

use emu_cpu::trace::{Event, Kind};
use serde_json::{json, Map, Value};

pub const PID: u32 = 1;

/// 1 ns, in µs.
const FLOW_NUDGE_US: f64 = 0.001;

fn args(a: &[(&'static str, String)]) -> Value {
    Value::Object(a.iter().map(|(k, v)| (k.to_string(), Value::String(v.clone()))).collect::<Map<_, _>>())
}

/// Convert events to trace-event objects (metadata first).
pub fn to_json(title: &str, nr_cpus: usize, events: &[Event]) -> Value {
    let mut out = Vec::with_capacity(events.len() + nr_cpus + 1);
    out.push(json!({"ph": "M", "pid": PID, "tid": 0, "name": "process_name", "args": {"name": title}}));
    let max_cpu = events.iter().map(|e| e.cpu as usize + 1).max().unwrap_or(0).max(nr_cpus);
    for c in 0..max_cpu {
        out.push(json!({"ph": "M", "pid": PID, "tid": c, "name": "thread_name", "args": {"name": format!("CPU{c}")}}));
        out.push(json!({"ph": "M", "pid": PID, "tid": c, "name": "thread_sort_index", "args": {"sort_index": c}}));
    }
    for e in events {
        // A flow point sits 1 ns inside the slice it starts or ends in, so
        // the importer binds it to that slice and not to its parent.
        let ts = match e.kind {
            Kind::FlowStart { .. } | Kind::FlowEnd { .. } => e.ts_us + FLOW_NUDGE_US,
            _ => e.ts_us,
        };
        let mut o = json!({
            "pid": PID,
            "tid": e.cpu,
            "ts": ts,
            "name": e.name,
            "cat": e.cat,
        });
        let m = o.as_object_mut().expect("object");
        match e.kind {
            Kind::Slice { dur_us } => {
                m.insert("ph".into(), "X".into());
                m.insert("dur".into(), dur_us.into());
            }
            Kind::Instant => {
                m.insert("ph".into(), "i".into());
                m.insert("s".into(), "t".into());
            }
            Kind::FlowStart { id } => {
                m.insert("ph".into(), "s".into());
                m.insert("id".into(), id.into());
            }
            Kind::FlowEnd { id } => {
                m.insert("ph".into(), "f".into());
                m.insert("bp".into(), "e".into());
                m.insert("id".into(), id.into());
            }
        }
        if !e.args.is_empty() {
            m.insert("args".into(), args(&e.args));
        }
        out.push(o);
    }
    json!({"traceEvents": out, "displayTimeUnit": "ns"})
}

/// Write the trace to `path`.
pub fn write(path: &std::path::Path, title: &str, nr_cpus: usize, events: &[Event]) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("cannot write trace {}: {e}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    serde_json::to_writer(&mut w, &to_json(title, nr_cpus, events))
        .map_err(|e| format!("cannot write trace {}: {e}", path.display()))?;
    w.flush().map_err(|e| format!("cannot write trace {}: {e}", path.display()))
}
