//! `fleethub method invoke`: call a direct method on a connected device or module and print its answer.

use fleethub_service::protocol::ids::{DeviceId, ModuleId, validate_method_name};
use fleethub_service::protocol::rest::{CloudToDeviceMethod, CloudToDeviceMethodResult};

use crate::failure::{ExplainResult as _, Kind, MethodCall, Operation};
use crate::hub::{HUB_HELP, HubArgs};
use crate::json_input::read_json_argument;
use crate::output::{Cell, OutputFormat, Palette, Table, compact, print_json};

#[derive(clap::Args)]
#[command(after_long_help = HUB_HELP)]
pub(crate) struct MethodCommand {
    #[command(flatten)]
    hub: HubArgs,
    #[command(subcommand)]
    action: MethodAction,
}

#[derive(clap::Subcommand)]
enum MethodAction {
    /// Call a direct method and print the device's status and payload
    ///
    /// Exits 0 whenever the device answered, whatever status it chose; 1 when it did not (not registered,
    /// not online, timed out), with the hub's error code.
    Invoke {
        /// The device's id
        device_id: DeviceId,
        /// The direct method to call, e.g. firmwareUpdate
        #[arg(value_name = "METHOD_NAME", value_parser = parse_method_name)]
        method_name: String,
        /// Call the method on this module of the device
        #[arg(long, value_name = "MODULE_ID")]
        module: Option<ModuleId>,
        /// The request payload: JSON, @FILE or - (stdin)
        #[arg(long, value_name = "JSON", default_value = "null")]
        payload: String,
        /// Seconds to wait for the device's answer once it has the call (the response timeout; 5 to 300, as in
        /// Azure)
        #[arg(
            long,
            value_name = "SECONDS",
            default_value_t = 30,
            value_parser = clap::value_parser!(u64).range(5..=300)
        )]
        timeout: u64,
        /// Seconds to wait for the device to come online first (0 to 300, as in Azure); by default it must be
        /// online now
        #[arg(
            long,
            value_name = "SECONDS",
            value_parser = clap::value_parser!(u64).range(0..=300)
        )]
        connect_timeout: Option<u64>,
    },
}

fn parse_method_name(text: &str) -> Result<String, String> {
    validate_method_name(text)
        .map(|()| text.to_owned())
        .map_err(|error| error.to_string())
}

pub(crate) async fn run(command: MethodCommand) -> anyhow::Result<()> {
    let hub = command.hub.connect().await?;
    let format = command.hub.output;
    let palette = Palette::for_stdout();
    let MethodAction::Invoke {
        device_id,
        method_name,
        module,
        payload,
        timeout,
        connect_timeout,
    } = command.action;
    let payload = read_json_argument("--payload", &payload)?;
    let subject = match &module {
        Some(module_id) => format!("module {module_id} of device {device_id}"),
        None => format!("device {device_id}"),
    };
    let operation = Operation::new(
        Kind::InvokeMethod,
        format!("invoke method {method_name} on {subject}"),
    )
    .on(&device_id, module.as_ref())
    .with_method(MethodCall {
        name: method_name.clone(),
        response_timeout: timeout,
        connect_timeout,
    });
    let request = CloudToDeviceMethod {
        method_name,
        payload,
        response_timeout_in_seconds: Some(timeout),
        connect_timeout_in_seconds: connect_timeout,
    };
    let result = match &module {
        Some(module_id) => {
            hub.client
                .invoke_module_method(&device_id, module_id, &request)
                .await
        }
        None => hub.client.invoke_method(&device_id, &request).await,
    }
    .or_explain(&hub, &operation)
    .await?;
    print_result(format, &palette, &result)
}

fn print_result(
    format: OutputFormat,
    palette: &Palette,
    result: &CloudToDeviceMethodResult,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_json(result),
        OutputFormat::Table => result_table(palette, result).print(palette),
    }
}

fn result_table(palette: &Palette, result: &CloudToDeviceMethodResult) -> Table {
    let style = if (200..300).contains(&result.status) {
        palette.good
    } else {
        palette.change
    };
    let mut table = Table::new(&["STATUS", "PAYLOAD"]);
    table.row(vec![
        Cell::styled(result.status.to_string(), style),
        compact(&result.payload).into(),
    ]);
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn method_names_follow_azure_rules() {
        assert_eq!(
            parse_method_name("firmwareUpdate").unwrap(),
            "firmwareUpdate"
        );
        assert!(
            parse_method_name("has space")
                .unwrap_err()
                .contains("not allowed")
        );
        assert!(parse_method_name("").unwrap_err().contains("empty"));
    }

    #[test]
    fn results_print_status_and_compact_payload() {
        let palette = Palette::new(false);
        let result = CloudToDeviceMethodResult {
            status: 200,
            payload: json!({"Response": "Firmware update started"}),
        };
        assert_eq!(
            result_table(&palette, &result).render(&palette),
            "STATUS  PAYLOAD\n200     {\"Response\":\"Firmware update started\"}\n"
        );
    }
}
