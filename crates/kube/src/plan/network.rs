//! How the pod resolves names: its DNS configuration and its host aliases (the services'
//! first).

use k8s_openapi::api::core::v1::{HostAlias, PodDNSConfig, PodDNSConfigOption};
use podrunner_config::kubernetes::KubernetesConfig;

/// The services' host alias first, then the configured ones: the hosts file resolves the
/// first match (`createHostAliases` in `host_aliases.go`).
pub(super) fn host_aliases(
    config: &KubernetesConfig,
    services: Option<HostAlias>,
) -> Vec<HostAlias> {
    services
        .into_iter()
        .chain(config.host_aliases.iter().map(|h| HostAlias {
            ip: h.ip.clone(),
            hostnames: Some(h.hostnames.clone()),
        }))
        .collect()
}

/// The configured DNS settings of the pod.
pub(super) fn dns_config(config: &KubernetesConfig) -> Option<PodDNSConfig> {
    config.dns_config.as_ref().map(|d| PodDNSConfig {
        nameservers: (!d.nameservers.is_empty()).then(|| d.nameservers.clone()),
        searches: (!d.searches.is_empty()).then(|| d.searches.clone()),
        options: (!d.options.is_empty()).then(|| {
            d.options
                .iter()
                .map(|o| PodDNSConfigOption {
                    name: Some(o.name.clone()),
                    value: o.value.clone(),
                })
                .collect()
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use podrunner_config::kubernetes::{DnsConfig, DnsOption};

    fn alias(ip: &str, host: &str) -> HostAlias {
        HostAlias {
            ip: ip.into(),
            hostnames: Some(vec![host.into()]),
        }
    }

    #[test]
    fn the_services_alias_comes_before_the_configured_ones() {
        let config = KubernetesConfig {
            host_aliases: vec![podrunner_config::kubernetes::HostAlias {
                ip: "10.0.0.1".into(),
                hostnames: vec!["db".into()],
            }],
            ..Default::default()
        };
        let services = alias("127.0.0.1", "postgres");
        let cases = [
            (
                Some(services.clone()),
                vec![services.clone(), alias("10.0.0.1", "db")],
            ),
            (None, vec![alias("10.0.0.1", "db")]),
        ];
        for (from_services, expected) in cases {
            assert_eq!(host_aliases(&config, from_services), expected);
        }
        assert_eq!(host_aliases(&KubernetesConfig::default(), None), vec![]);
    }

    #[test]
    fn empty_dns_lists_are_left_out() {
        assert_eq!(dns_config(&KubernetesConfig::default()), None);
        let config = KubernetesConfig {
            dns_config: Some(DnsConfig {
                nameservers: vec!["1.1.1.1".into()],
                searches: vec![],
                options: vec![DnsOption {
                    name: "ndots".into(),
                    value: Some("2".into()),
                }],
            }),
            ..Default::default()
        };
        assert_eq!(
            dns_config(&config),
            Some(PodDNSConfig {
                nameservers: Some(vec!["1.1.1.1".into()]),
                searches: None,
                options: Some(vec![PodDNSConfigOption {
                    name: Some("ndots".into()),
                    value: Some("2".into()),
                }]),
            })
        );
    }
}
