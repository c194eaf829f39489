//! `fleethub policy renew-key`: regenerates one key of a shared access policy, or swaps the two (a fleethub
//! extension, `POST /policies/{name}/regenerateKey`). Needs a policy with every right (`iothubowner`).

use fleethub_service::KeyToRenew;

use crate::failure::{ExplainResult as _, Kind, Operation};
use crate::hub::{HUB_HELP, HubArgs};
use crate::output::{Cell, OutputFormat, Palette, Table, print_json};

#[derive(clap::Args)]
#[command(after_long_help = HUB_HELP)]
pub(crate) struct PolicyCommand {
    #[command(flatten)]
    hub: HubArgs,
    #[command(subcommand)]
    action: PolicyAction,
}

#[derive(clap::Subcommand)]
enum PolicyAction {
    /// Replace a policy's primary or secondary key with a fresh one, or swap the two
    ///
    /// Tokens signed with a replaced key stop working at once: service calls get 401 and devices connected
    /// with such a policy token are disconnected. Renewing the key this command signs with makes the
    /// connection string you used stale: print a new one with `fleethub connection-string --policy NAME`.
    RenewKey {
        /// The policy's name, e.g. service, registryRead, device
        name: String,
        /// Which key: primary, secondary, or swap the two
        #[arg(long, value_name = "primary|secondary|swap", default_value = "primary")]
        key: KeyToRenew,
    },
}

pub(crate) async fn run(command: PolicyCommand) -> anyhow::Result<()> {
    let hub = command.hub.connect().await?;
    let format = command.hub.output;
    let palette = Palette::for_stdout();
    let PolicyAction::RenewKey { name, key } = command.action;
    let operation = Operation::new(
        Kind::WritePolicy,
        format!("renew the {} key of policy {name}", key.as_str()),
    );
    let policy = hub
        .client
        .regenerate_policy_key(&name, key)
        .await
        .or_explain(&hub, &operation)
        .await?;
    match format {
        OutputFormat::Json => print_json(&policy),
        OutputFormat::Table => {
            let mut table = Table::unheaded();
            for (label, value) in [
                ("policy", policy.key_name.clone()),
                ("primary key", policy.primary_key.clone()),
                ("secondary key", policy.secondary_key.clone()),
                ("rights", policy.rights.join(", ")),
            ] {
                table.row(vec![Cell::styled(label, palette.label), value.into()]);
            }
            table.print(&palette)
        }
    }
}
