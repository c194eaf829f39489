//! `fleethub audit list`: the hub's audit log (a fleethub extension), newest first: who (which policy, from
//! where) changed what, when, and with what result. Needs a policy with RegistryRead.

use anyhow::{Context as _, anyhow};
use fleethub_service::AuditQuery;
use fleethub_service::protocol::audit::{AUDIT_PAGE_MAX, AuditEntry};
use fleethub_service::protocol::rest::{format_time, parse_time};
use time::OffsetDateTime;

use crate::failure::{ExplainResult as _, Kind, Operation};
use crate::hub::{HUB_HELP, HubArgs};
use crate::output::{Cell, OutputFormat, Palette, Table, human_time, or_dash, print_json};

#[derive(clap::Args)]
#[command(after_long_help = HUB_HELP)]
pub(crate) struct AuditCommand {
    #[command(flatten)]
    hub: HubArgs,
    #[command(subcommand)]
    action: AuditAction,
}

#[derive(clap::Subcommand)]
enum AuditAction {
    /// Print audit records, newest first
    ///
    /// Every state-changing service operation (registry, twins, methods, jobs, configurations, C2D, routing,
    /// firmware, rollouts, checkpoints) is recorded with the policy that made it, its target, its result and
    /// the caller's address, including refused ones.
    List {
        /// Only records from this time on: an RFC 3339 time or a span back from now (90s, 15m, 2h, 7d)
        #[arg(long, value_name = "TIME|SPAN")]
        since: Option<String>,
        /// Only records before this time: an RFC 3339 time or a span back from now
        #[arg(long, value_name = "TIME|SPAN")]
        until: Option<String>,
        /// Only this operation, e.g. twin.patch, device.delete, method.invoke
        #[arg(long, value_name = "NAME")]
        operation: Option<String>,
        /// Only this target: a device id, DEVICE/MODULE, a job, configuration or rollout id, MODEL/VERSION
        #[arg(long, value_name = "ID")]
        target: Option<String>,
        /// Only operations made with this shared access policy
        #[arg(long, value_name = "NAME")]
        policy: Option<String>,
        /// Records to print at most
        #[arg(long, default_value_t = 100, value_name = "N")]
        limit: usize,
    },
}

pub(crate) async fn run(command: AuditCommand) -> anyhow::Result<()> {
    let hub = command.hub.connect().await?;
    let format = command.hub.output;
    let palette = Palette::for_stdout();
    let AuditAction::List {
        since,
        until,
        operation,
        target,
        policy,
        limit,
    } = command.action;
    let now = OffsetDateTime::now_utc();
    let mut query = AuditQuery {
        from: since
            .as_deref()
            .map(|text| point_in_time(text, now).context("--since"))
            .transpose()?,
        to: until
            .as_deref()
            .map(|text| point_in_time(text, now).context("--until"))
            .transpose()?,
        operation,
        target,
        policy,
        limit: None,
        continuation: None,
    };
    let explain = Operation::new(Kind::ReadIdentity, "read the audit log");
    let mut records: Vec<AuditEntry> = Vec::new();
    while records.len() < limit {
        query.limit = Some((limit - records.len()).min(AUDIT_PAGE_MAX));
        let page = hub
            .client
            .audit_page(&query)
            .await
            .or_explain(&hub, &explain)
            .await?;
        records.extend(page.records);
        match page.continuation_token {
            Some(token) => query.continuation = Some(token),
            None => break,
        }
    }
    match format {
        OutputFormat::Json => print_json(&records),
        OutputFormat::Table if records.is_empty() => {
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                eprintln!("no audit records match");
            }
            Ok(())
        }
        OutputFormat::Table => audit_table(&palette, &records).print(&palette),
    }
}

/// An RFC 3339 time, or a span back from `now` (`90s`, `15m`, `2h`, `7d`), as the hub's time text.
fn point_in_time(text: &str, now: OffsetDateTime) -> anyhow::Result<String> {
    if let Ok(time) = parse_time(text) {
        return Ok(format_time(time));
    }
    let split = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (amount, unit) = text.split_at(split);
    let amount: i64 = amount.parse().map_err(|_| {
        anyhow!(
            "{text:?} is neither an RFC 3339 time (2026-05-01T10:00:00Z) nor a span such as 15m"
        )
    })?;
    let span = match unit {
        "s" => time::Duration::seconds(amount),
        "m" => time::Duration::minutes(amount),
        "h" => time::Duration::hours(amount),
        "d" => time::Duration::days(amount),
        _ => {
            return Err(anyhow!(
                "{text:?}: a span ends in s, m, h or d (seconds, minutes, hours, days)"
            ));
        }
    };
    Ok(format_time(now - span))
}

fn audit_table(palette: &Palette, records: &[AuditEntry]) -> Table {
    let mut table = Table::new(&["TIME", "POLICY", "OPERATION", "TARGET", "RESULT", "PEER"]);
    for record in records {
        let result = match &record.error_code {
            None => record.status.to_string(),
            Some(code) => format!("{} {code}", record.status),
        };
        let style = if (200..300).contains(&record.status) {
            palette.good
        } else {
            palette.bad
        };
        table.row(vec![
            Cell::plain(human_time(Some(&record.time))),
            Cell::plain(or_dash(record.policy.clone())),
            Cell::plain(record.operation.clone()),
            Cell::plain(or_dash(record.target.clone())),
            Cell::styled(result, style),
            Cell::plain(or_dash(record.peer.clone())),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn times_and_spans_name_a_point_in_time() {
        let now = datetime!(2026-05-01 10:00 UTC);
        assert_eq!(
            point_in_time("2h", now).expect("span"),
            "2026-05-01T08:00:00.0000000Z"
        );
        assert_eq!(
            point_in_time("7d", now).expect("span"),
            "2026-04-24T10:00:00.0000000Z"
        );
        assert_eq!(
            point_in_time("2026-04-01T00:00:00Z", now).expect("time"),
            "2026-04-01T00:00:00.0000000Z"
        );
        for bad in ["", "h", "2w", "yesterday", "-1h"] {
            assert!(point_in_time(bad, now).is_err(), "{bad}");
        }
    }
}
