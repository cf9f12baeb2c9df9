//! Chrome trace-event JSON (the format ui.perfetto.dev and chrome://tracing
//! open) from `emu_cpu::trace` events.
//!
//! Layout: one process (pid 1, `"mmemu <scenario>"`) with one thread track
//! per emulated CPU (tid = CPU number, named `"CPU<n>"` by thread_name
//! metadata).  Slices are complete events ("X"), tlb_flush events are
//! thread-scoped instants ("i") whose args carry the reason and pages,
//! IPIs are flow events ("s" on the sender inside its
//! smp_call_function_many slice, "f" bound to the target's IPI slice).
//! Timestamps are microseconds since the run started.
//!
//! Streamed: each event is formatted straight into a buffered file (keys
//! in sorted order, as serde_json's maps put them), with no JSON value
//! tree in memory; the only extra memory is the sorted ids of the IPI
//! flows, from which each `smp_call_function_many` slice's targets are
//! named.

use std::io::{self, Write};

use emu_cpu::trace::{Args, Event, Kind};
use mm_core::stats::TLB_FLUSH_ALL;

pub const PID: u32 = 1;

/// 1 ns, in µs.
const FLOW_NUDGE_US: f64 = 0.001;

/// A JSON number (serde_json's shortest form, e.g. `12.0`, `4.147`).
fn num<W: Write>(w: &mut W, x: f64) -> io::Result<()> {
    serde_json::to_writer(w, &x).map_err(io::Error::other)
}

/// A JSON string, escaped.
fn string<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    serde_json::to_writer(w, s).map_err(io::Error::other)
}

/// `"args":{...},` (keys sorted), or nothing.  `flows`: the sorted ids of
/// every flow start, `call << 8 | target`.
fn args<W: Write>(w: &mut W, a: &Args, flows: &[u64]) -> io::Result<()> {
    match *a {
        Args::None => Ok(()),
        Args::TlbFlush { reason, pages } => {
            w.write_all(b"\"args\":{\"pages\":")?;
            if pages == TLB_FLUSH_ALL {
                w.write_all(b"\"TLB_FLUSH_ALL\"")?;
            } else {
                write!(w, "\"{pages}\"")?;
            }
            w.write_all(b",\"reason\":")?;
            string(w, reason.name())?;
            w.write_all(b"},")
        }
        Args::From(cpu) => write!(w, "\"args\":{{\"from\":\"{cpu}\"}},"),
        Args::Targets { call } => {
            w.write_all(b"\"args\":{\"targets\":\"")?;
            let first = flows.partition_point(|id| id >> 8 < call);
            for (n, id) in flows[first..].iter().take_while(|id| *id >> 8 == call).enumerate() {
                write!(w, "{}CPU{}", if n == 0 { "" } else { "," }, id & 0xff)?;
            }
            w.write_all(b"\"},")
        }
    }
}

fn event<W: Write>(w: &mut W, e: &Event, flows: &[u64]) -> io::Result<()> {
    w.write_all(b"{")?;
    args(w, &e.args, flows)?;
    if let Kind::FlowEnd { .. } = e.kind {
        w.write_all(b"\"bp\":\"e\",")?;
    }
    w.write_all(b"\"cat\":")?;
    string(w, e.cat.name())?;
    match e.kind {
        Kind::Slice { dur_us } => {
            w.write_all(b",\"dur\":")?;
            num(w, dur_us)?;
        }
        Kind::FlowStart { id } | Kind::FlowEnd { id } => write!(w, ",\"id\":{id}")?,
        Kind::Instant => {}
    }
    w.write_all(b",\"name\":")?;
    string(w, e.name)?;
    let ph = match e.kind {
        Kind::Slice { .. } => "X",
        Kind::Instant => "i",
        Kind::FlowStart { .. } => "s",
        Kind::FlowEnd { .. } => "f",
    };
    write!(w, ",\"ph\":\"{ph}\",\"pid\":{PID},")?;
    if let Kind::Instant = e.kind {
        w.write_all(b"\"s\":\"t\",")?;
    }
    // A flow point sits 1 ns inside the slice it starts or ends in, so the
    // importer binds it to that slice and not to its parent.
    let ts = match e.kind {
        Kind::FlowStart { .. } | Kind::FlowEnd { .. } => e.ts_us + FLOW_NUDGE_US,
        _ => e.ts_us,
    };
    write!(w, "\"tid\":{},\"ts\":", e.cpu)?;
    num(w, ts)?;
    w.write_all(b"}")
}

/// Write the trace-event JSON of `events` to `w` (metadata first).
pub fn write_to<W: Write>(w: &mut W, title: &str, nr_cpus: usize, events: &[Event]) -> io::Result<()> {
    let mut flows: Vec<u64> =
        events.iter().filter_map(|e| if let Kind::FlowStart { id } = e.kind { Some(id) } else { None }).collect();
    flows.sort_unstable();
    w.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[{\"args\":{\"name\":")?;
    string(w, title)?;
    write!(w, "}},\"name\":\"process_name\",\"ph\":\"M\",\"pid\":{PID},\"tid\":0}}")?;
    let max_cpu = events.iter().map(|e| e.cpu as usize + 1).max().unwrap_or(0).max(nr_cpus);
    for c in 0..max_cpu {
        write!(
            w,
            ",{{\"args\":{{\"name\":\"CPU{c}\"}},\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":{PID},\"tid\":{c}}}"
        )?;
        write!(w, ",{{\"args\":{{\"sort_index\":{c}}},\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":{PID},\"tid\":{c}}}")?;
    }
    for e in events {
        w.write_all(b",")?;
        event(w, e, &flows)?;
    }
    w.write_all(b"]}")
}

/// Write the trace to `path`.
pub fn write(path: &std::path::Path, title: &str, nr_cpus: usize, events: &[Event]) -> Result<(), String> {
    let err = |e: io::Error| format!("cannot write trace {}: {e}", path.display());
    let f = std::fs::File::create(path).map_err(err)?;
    let mut w = io::BufWriter::with_capacity(1 << 20, f);
    write_to(&mut w, title, nr_cpus, events).map_err(err)?;
    w.flush().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use emu_cpu::trace::Cat;
    use mm_core::stats::Stat;
    use mm_core::CpuId;

    fn ev(cpu: u32, ts_us: f64, name: &'static str, cat: Cat, kind: Kind, args: Args) -> Event {
        Event { ts_us, kind, name, args, cpu, cat }
    }

    /// Every phase and arg, byte for byte as the serde_json value tree
    /// wrote them (sorted keys, args as strings, flows nudged 1 ns in).
    #[test]
    fn writes_every_phase_and_arg_in_the_chrome_format() {
        let evs = [
            ev(0, 1.5, "ipi", Cat::Ipi, Kind::FlowStart { id: 7 << 8 | 2 }, Args::None),
            ev(0, 1.5, "ipi", Cat::Ipi, Kind::FlowStart { id: 7 << 8 | 1 }, Args::None),
            ev(1, 2.0, "ipi", Cat::Ipi, Kind::FlowEnd { id: 7 << 8 | 1 }, Args::None),
            ev(1, 2.0, "IPI: call_function", Cat::Irq, Kind::Slice { dur_us: 0.25 }, Args::From(CpuId(0))),
            ev(
                1,
                2.1,
                "tlb_flush",
                Cat::Tlb,
                Kind::Instant,
                Args::TlbFlush { reason: Stat::TraceRemoteShootdown, pages: 3 },
            ),
            ev(
                2,
                2.2,
                "tlb_flush",
                Cat::Tlb,
                Kind::Instant,
                Args::TlbFlush { reason: Stat::TraceOnTaskSwitch, pages: TLB_FLUSH_ALL },
            ),
            ev(0, 1.5, "smp_call_function_many", Cat::Ipi, Kind::Slice { dur_us: 4.0 }, Args::Targets { call: 7 }),
            ev(3, 0.0, "munmap", Cat::Syscall, Kind::Slice { dur_us: 9.0 }, Args::None),
        ];
        let mut out = Vec::new();
        write_to(&mut out, "mmemu \"t\"", 2, &evs).unwrap();
        let out = String::from_utf8(out).unwrap();
        let meta = |c: u32| {
            format!(
                r#"{{"args":{{"name":"CPU{c}"}},"name":"thread_name","ph":"M","pid":1,"tid":{c}}},{{"args":{{"sort_index":{c}}},"name":"thread_sort_index","ph":"M","pid":1,"tid":{c}}},"#
            )
        };
        let want = [
            r#"{"displayTimeUnit":"ns","traceEvents":[{"args":{"name":"mmemu \"t\""},"name":"process_name","ph":"M","pid":1,"tid":0},"#.to_string(),
            meta(0),
            meta(1),
            meta(2),
            meta(3),
            r#"{"cat":"ipi","id":1794,"name":"ipi","ph":"s","pid":1,"tid":0,"ts":1.501},"#.to_string(),
            r#"{"cat":"ipi","id":1793,"name":"ipi","ph":"s","pid":1,"tid":0,"ts":1.501},"#.to_string(),
            r#"{"bp":"e","cat":"ipi","id":1793,"name":"ipi","ph":"f","pid":1,"tid":1,"ts":2.001},"#.to_string(),
            r#"{"args":{"from":"CPU0"},"cat":"irq","dur":0.25,"name":"IPI: call_function","ph":"X","pid":1,"tid":1,"ts":2.0},"#.to_string(),
            r#"{"args":{"pages":"3","reason":"TLB_REMOTE_SHOOTDOWN"},"cat":"tlb","name":"tlb_flush","ph":"i","pid":1,"s":"t","tid":1,"ts":2.1},"#.to_string(),
            r#"{"args":{"pages":"TLB_FLUSH_ALL","reason":"TLB_FLUSH_ON_TASK_SWITCH"},"cat":"tlb","name":"tlb_flush","ph":"i","pid":1,"s":"t","tid":2,"ts":2.2},"#.to_string(),
            r#"{"args":{"targets":"CPU1,CPU2"},"cat":"ipi","dur":4.0,"name":"smp_call_function_many","ph":"X","pid":1,"tid":0,"ts":1.5},"#.to_string(),
            r#"{"cat":"syscall","dur":9.0,"name":"munmap","ph":"X","pid":1,"tid":3,"ts":0.0}]}"#.to_string(),
        ]
        .concat();
        assert_eq!(out, want);
        let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(v["traceEvents"].as_array().unwrap().len(), 1 + 2 * 4 + evs.len());
    }
}
