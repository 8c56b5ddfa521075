//! Parsers of the flag syntaxes clap does not know: docker's `--publish`
//! (short and long), `--endpoint ADDR[,weight=N]`, `--label-add KEY=VALUE`, `--filter KEY=VALUE`
//! and `scale SERVICE=REPLICAS`. Each error says what was expected.

use lb_config::{EndpointSpec, PortSpec};

/// One `--filter KEY=VALUE` (the value may hold `=`, as `label=zone=a`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub key: String,
    pub value: String,
}

pub fn parse_filter(text: &str) -> Result<Filter, String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => Ok(Filter {
            key: key.to_owned(),
            value: value.to_owned(),
        }),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

pub fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

pub fn parse_scale(text: &str) -> Result<(String, i64), String> {
    let (name, replicas) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not SERVICE=REPLICAS"))?;
    let replicas = replicas
        .parse()
        .map_err(|_| format!("{replicas:?} is not a number of replicas"))?;
    Ok((name.to_owned(), replicas))
}

fn parse_port(text: &str, what: &str) -> Result<i64, String> {
    text.parse()
        .map_err(|_| format!("{what} {text:?} is not a port number"))
}

/// A publish protocol: `tcp` (the default) or `udp`, or a clear refusal.
fn parse_protocol(text: &str) -> Result<String, String> {
    match text {
        "tcp" | "udp" => Ok(text.to_owned()),
        other => Err(format!("protocol {other:?} is not tcp or udp")),
    }
}

/// docker's publish syntax, short (`8080:80`, `8080:80/tcp`, `53:53/udp`,
/// `8080`) and long (`published=8080,target=80,protocol=tcp`; `target=N`
/// alone is a port on the VIP only).
pub fn parse_publish(text: &str) -> Result<PortSpec, String> {
    if text.contains('=') {
        let mut spec = PortSpec::default();
        let mut published = None;
        for pair in text.split(',') {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not key=value"))?;
            match key {
                "published" => published = Some(parse_port(value, "published")?),
                "target" => spec.target = Some(parse_port(value, "target")?),
                "protocol" => spec.protocol = Some(parse_protocol(value)?),
                other => return Err(format!("unknown publish key {other:?}")),
            }
        }
        // `target=6379` alone: on the VIP only, published nowhere.
        spec.published = match (published, spec.target) {
            (Some(published), _) => published,
            (None, Some(_)) => 0,
            (None, None) => return Err("published= or target= is required".to_owned()),
        };
        return Ok(spec);
    }
    let (ports, protocol) = match text.split_once('/') {
        Some((ports, protocol)) => (ports, Some(parse_protocol(protocol)?)),
        None => (text, None),
    };
    let (published, target) = match ports.split_once(':') {
        Some((p, t)) => (parse_port(p, "published")?, Some(parse_port(t, "target")?)),
        None => (parse_port(ports, "published")?, None),
    };
    Ok(PortSpec {
        published,
        target,
        protocol,
    })
}

pub fn parse_endpoint(text: &str) -> Result<EndpointSpec, String> {
    let mut parts = text.split(',');
    let address = parts.next().unwrap_or_default().to_owned();
    let mut weight = None;
    for part in parts {
        match part.split_once('=') {
            Some(("weight", value)) => {
                weight = Some(
                    value
                        .parse()
                        .map_err(|_| format!("weight {value:?} is not a number"))?,
                )
            }
            _ => return Err(format!("{part:?}: only weight=N may follow the address")),
        }
    }
    Ok(EndpointSpec { address, weight })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_syntaxes() {
        let short = parse_publish("8080:80").unwrap();
        assert_eq!((short.published, short.target), (8080, Some(80)));
        let long = parse_publish("published=8080,target=80,protocol=tcp").unwrap();
        assert_eq!(
            (long.published, long.target, long.protocol.as_deref()),
            (8080, Some(80), Some("tcp"))
        );
        assert_eq!(parse_publish("9000").unwrap().target, None);
        assert!(parse_publish("x:80").is_err());
        let vip_only = parse_publish("target=6379").unwrap();
        assert_eq!((vip_only.published, vip_only.target), (0, Some(6379)));
        assert!(parse_publish("protocol=tcp").is_err());
        let tcp = parse_publish("8080:80/tcp").unwrap();
        assert_eq!(
            (tcp.published, tcp.target, tcp.protocol.as_deref()),
            (8080, Some(80), Some("tcp"))
        );
        assert_eq!(parse_publish("9000/tcp").unwrap().published, 9000);
        for udp in ["53:53/udp", "published=53,target=53,protocol=udp"] {
            let spec = parse_publish(udp).unwrap();
            assert_eq!(
                (spec.published, spec.target, spec.protocol.as_deref()),
                (53, Some(53), Some("udp"))
            );
        }
        assert_eq!(
            parse_publish("8080:80/sctp").unwrap_err(),
            "protocol \"sctp\" is not tcp or udp"
        );
    }

    #[test]
    fn endpoint_and_scale_syntaxes() {
        let e = parse_endpoint("10.0.0.1:80,weight=3").unwrap();
        assert_eq!((e.address.as_str(), e.weight), ("10.0.0.1:80", Some(3)));
        assert!(parse_endpoint("10.0.0.1,colour=red").is_err());
        assert_eq!(parse_scale("web=5").unwrap(), ("web".to_owned(), 5));
        assert!(parse_scale("web").is_err());
    }
}
