//! `netctl health`: every service instance, UP or DOWN by the controller's health checks,
//! with check latency, its state in the load-balancing maps, and (when the controller
//! supervises processes) restarts. A live dashboard, or `--once` for scripts: exit 1 when
//! something is down.

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use anyhow::{Context, bail};
use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table},
};
use serde::Serialize;
use serde_json::Value;

use super::resolve_instance;
use crate::{
    instance::{
        agent_client as api,
        agent_status::{self, BackendState, LbStatus},
    },
    output,
    reconcile::preflight,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print one table and exit (1 when an instance is down).
    #[arg(long)]
    once: bool,
    /// Machine-readable output (implies --once).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceHealth {
    pub service: String,
    pub instance: String,
    pub address: String,
    pub up: bool,
    /// `unchecked` until the first check.
    pub status: String,
    pub latency_ms: Option<f64>,
    pub last_error: Option<String>,
    /// Seconds in the current up/down state.
    pub for_s: Option<f64>,
    /// `active`, `draining`, `down` or `unchecked` in the LB maps.
    pub lb: String,
    pub restarts: Option<u64>,
}

pub async fn run(args: Args, prefix: Option<&str>) -> anyhow::Result<ExitCode> {
    preflight::require_root("health")?;
    let Some(instance) = resolve_instance(prefix)? else {
        bail!("no netctl platform is up");
    };
    if args.once || args.json {
        let rows = fetch(&instance).await?;
        if args.json {
            output::print_json(&rows)?;
        } else {
            print(&rows)?;
        }
        let all_up = !rows.is_empty() && rows.iter().all(|r| r.up);
        return Ok(if all_up {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    dashboard(&instance).await?;
    Ok(ExitCode::SUCCESS)
}

/// One row per instance, from the controller's status.
pub async fn fetch(instance: &str) -> anyhow::Result<Vec<InstanceHealth>> {
    let status = api::get(instance, "/v1/status")
        .await
        .context("asking the controller (health checks run there; `netctl up` restarts it)")?;
    rows(&status)
}

fn rows(status: &Value) -> anyhow::Result<Vec<InstanceHealth>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let restarts = restarts(status);
    let backends = match agent_status::component::<LbStatus>(status, "lb") {
        Some(lb) => lb?.backends,
        None => Vec::new(),
    };
    let mut by_instance: BTreeMap<(String, String), InstanceHealth> = BTreeMap::new();
    for b in backends {
        let h = b.health.as_ref();
        let up = h.is_some_and(|h| h.up);
        let entry = by_instance
            .entry((b.service.clone(), b.instance.clone()))
            .or_insert_with(|| InstanceHealth {
                restarts: restarts.get(&b.instance).copied(),
                service: b.service.clone(),
                instance: b.instance.clone(),
                address: format!("{}:{}", b.addr, b.port),
                up,
                status: match h {
                    None => "unchecked".into(),
                    Some(h) if h.up => "UP".into(),
                    Some(_) => "DOWN".into(),
                },
                latency_ms: h.and_then(|h| h.latency_ms),
                last_error: h.and_then(|h| h.last_error.clone()),
                for_s: h.map(|h| (now - h.since).max(0.0)),
                lb: b.state.name().to_string(),
            });
        // Several ports: the instance is only as active as its least active port.
        if b.state != BackendState::Active {
            entry.lb = b.state.name().to_string();
        }
    }
    Ok(by_instance.into_values().collect())
}

/// Restarts per endpoint, from the supervisor's part of the controller's status (the
/// `services` component: a list of processes).
fn restarts(status: &Value) -> BTreeMap<String, u64> {
    crate::supervisor::status::from_status(status)
        .into_iter()
        .flatten()
        .map(|s| (s.name, u64::from(s.restarts)))
        .collect()
}

fn cells(r: &InstanceHealth) -> Vec<String> {
    vec![
        r.service.clone(),
        r.instance.clone(),
        r.address.clone(),
        match (&r.status[..], &r.last_error) {
            ("DOWN", Some(e)) => format!("DOWN ({e})"),
            (s, _) => s.to_string(),
        },
        r.latency_ms.map_or("-".into(), |ms| format!("{ms:.1} ms")),
        r.lb.clone(),
        r.for_s.map_or("-".into(), age),
        r.restarts.map_or("-".into(), |n| n.to_string()),
    ]
}

const HEADER: [&str; 8] = [
    "service", "instance", "address", "health", "latency", "lb", "for", "restarts",
];

fn print(rows: &[InstanceHealth]) -> anyhow::Result<()> {
    let mut t = output::table(&HEADER);
    for r in rows {
        t.add_row(cells(r));
    }
    output::print_table(&t)?;
    let down = rows.iter().filter(|r| !r.up).count();
    output::print_line(&format!("{} up, {down} down", rows.len() - down))?;
    Ok(())
}

fn age(s: f64) -> String {
    let s = s as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// Full-screen table refreshed every second; q, Esc or Ctrl-C quits.
async fn dashboard(instance: &str) -> anyhow::Result<()> {
    let mut terminal = ratatui::init();
    let result = async {
        loop {
            let rows = fetch(instance).await;
            terminal.draw(|f| {
                let [top, body] = Layout::vertical([Constraint::Length(3), Constraint::Min(3)]).areas(f.area());
                let (text, table_rows) = match &rows {
                    Ok(rows) => {
                        let down = rows.iter().filter(|r| !r.up).count();
                        (
                            format!(
                                "netctl health — instance {instance} — {} up, {down} down — q to quit",
                                rows.len() - down
                            ),
                            rows.clone(),
                        )
                    }
                    Err(e) => (format!("controller unreachable: {e:#}"), Vec::new()),
                };
                f.render_widget(Paragraph::new(text).block(Block::default().borders(Borders::ALL)), top);
                let widths = [12, 12, 22, 28, 10, 10, 6, 8].map(Constraint::Length);
                let table = Table::new(
                    table_rows.iter().map(|r| {
                        let color = if r.up { Color::Green } else { Color::Red };
                        Row::new(cells(r).into_iter().enumerate().map(|(i, c)| {
                            let cell = Cell::from(c);
                            if i == 3 { cell.style(Style::default().fg(color)) } else { cell }
                        }))
                    }),
                    widths,
                )
                .header(Row::new(HEADER.map(|h| h.to_uppercase())).style(Style::default().add_modifier(Modifier::BOLD)))
                .block(Block::default().borders(Borders::ALL));
                f.render_widget(table, body);
            })?;
            if event::poll(Duration::from_secs(1))?
                && let Event::Key(k) = event::read()?
                && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                    || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL)))
            {
                return Ok::<(), anyhow::Error>(());
            }
        }
    }
    .await;
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn restarts_come_from_the_supervisor_component() {
        use crate::supervisor::status::{ServiceState, ServiceStatus};
        let process = |name: &str, restarts: u32| ServiceStatus {
            name: name.to_string(),
            service: name.split('-').next().unwrap_or(name).to_string(),
            netns: format!("nc-{name}"),
            address: "10.0.2.10".parse().expect("literal address"),
            port: Some(5000),
            program: "product".to_string(),
            state: ServiceState::Healthy,
            pid: Some(42),
            restarts,
            since_ms: 0,
            check: None,
            health: None,
            last_error: None,
            url: None,
            log: String::new(),
        };
        let status = json!({"components": {
            "services": [process("product-1", 2), process("edge", 0)],
            "lb": {"backends": []}
        }});
        let r = restarts(&status);
        assert_eq!(r.get("product-1"), Some(&2));
        assert_eq!(r.get("edge"), Some(&0));
        assert_eq!(r.len(), 2);
        // A status without the supervisor's part (an agent that has not started it) has
        // no restarts to show, rather than an error.
        assert!(restarts(&json!({})).is_empty());
    }
}
