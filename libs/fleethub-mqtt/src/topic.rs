//! Topic names, topic filters and how a filter matches a name (MQTT 3.1.1 §4.7).

use crate::error::TopicError;

const LEVEL_SEPARATOR: char = '/';
const MULTI_LEVEL_WILDCARD: &str = "#";
const SINGLE_LEVEL_WILDCARD: &str = "+";
const WILDCARDS: [char; 2] = ['#', '+'];
const MAX_TOPIC_LEN: usize = u16::MAX as usize;

/// Checks a topic name, the kind a PUBLISH carries: non-empty, at most 65535 bytes, no U+0000 and
/// no wildcard.
pub fn validate_topic_name(s: &str) -> Result<(), TopicError> {
    validate_common(s)?;
    if s.contains(WILDCARDS) {
        return Err(TopicError::WildcardInTopicName);
    }
    Ok(())
}

/// Checks a topic filter, the kind a SUBSCRIBE carries: the rules of a name, except that `+` may
/// fill a whole level and `#` may fill the last level.
pub fn validate_topic_filter(s: &str) -> Result<(), TopicError> {
    validate_common(s)?;
    let mut levels = s.split(LEVEL_SEPARATOR).peekable();
    while let Some(level) = levels.next() {
        if level == MULTI_LEVEL_WILDCARD {
            if levels.peek().is_some() {
                return Err(TopicError::MultiLevelWildcardNotLast);
            }
        } else if level != SINGLE_LEVEL_WILDCARD && level.contains(WILDCARDS) {
            return Err(TopicError::WildcardNotAlone);
        }
    }
    Ok(())
}

fn validate_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(s.len()));
    }
    if s.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// Whether `filter` matches `topic`. Both are assumed valid (see [`validate_topic_filter`] and
/// [`validate_topic_name`]); for invalid input the answer is unspecified, but it never panics.
///
/// A filter that starts with a wildcard does not match a topic that starts with `$`
/// (MQTT-4.7.2-1), so `#` does not see `$iothub/...` or `$SYS/...`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(WILDCARDS) {
        return false;
    }
    let mut filter_levels = filter.split(LEVEL_SEPARATOR);
    let mut topic_levels = topic.split(LEVEL_SEPARATOR);
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // `#` also matches the parent level: `sport/#` matches `sport`.
            (Some(MULTI_LEVEL_WILDCARD), _) => return true,
            (Some(SINGLE_LEVEL_WILDCARD), Some(_)) => {}
            (Some(filter_level), Some(topic_level)) if filter_level == topic_level => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_matches_follows_the_specification_examples() {
        // (filter, topic, matches); most rows are the examples of MQTT 3.1.1 §4.7.
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("sport/#", "sport/", true),
            ("sport/#", "sports", false),
            ("#", "sport/tennis", true),
            ("#", "/", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player2", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("sport/+/player1", "sport/tennis/player1", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("+", "finance", true),
            ("+/tennis/#", "sport/tennis/player1", true),
            ("+/tennis/#", "sport/golf", false),
            ("#", "$SYS/monitor/Clients", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("$SYS/#", "$SYS", true),
            ("#", "$iothub/twin/res/200/?$rid=1", false),
            ("$iothub/twin/res/#", "$iothub/twin/res/200/?$rid=1", true),
            (
                "$iothub/methods/POST/#",
                "$iothub/methods/POST/reboot/?$rid=1",
                true,
            ),
            (
                "$iothub/methods/POST/#",
                "$iothub/methods/res/200/?$rid=1",
                false,
            ),
            (
                "devices/dev1/messages/devicebound/#",
                "devices/dev1/messages/devicebound/%24.mid=msg-1",
                true,
            ),
            (
                "devices/dev1/messages/devicebound/#",
                "devices/dev2/messages/devicebound/",
                false,
            ),
            ("ACCOUNTS", "Accounts", false),
            ("Accounts payable", "Accounts payable", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(
                topic_matches(filter, topic),
                expected,
                "filter {filter:?} topic {topic:?}"
            );
        }
    }

    #[test]
    fn topic_filter_validation_follows_the_specification() {
        let long = "a".repeat(65_536);
        let cases: [(&str, Result<(), TopicError>); 21] = [
            ("sport/tennis/player1/#", Ok(())),
            ("sport/#", Ok(())),
            ("#", Ok(())),
            ("+", Ok(())),
            ("+/tennis/#", Ok(())),
            ("sport/+/player1", Ok(())),
            ("/", Ok(())),
            ("//", Ok(())),
            ("+/+", Ok(())),
            ("$SYS/#", Ok(())),
            ("Accounts payable", Ok(())),
            ("sport/tennis#", Err(TopicError::WildcardNotAlone)),
            ("sport+", Err(TopicError::WildcardNotAlone)),
            ("sport/++", Err(TopicError::WildcardNotAlone)),
            ("sport/#+", Err(TopicError::WildcardNotAlone)),
            (
                "sport/tennis/#/ranking",
                Err(TopicError::MultiLevelWildcardNotLast),
            ),
            ("#/", Err(TopicError::MultiLevelWildcardNotLast)),
            ("#/#", Err(TopicError::MultiLevelWildcardNotLast)),
            ("", Err(TopicError::Empty)),
            ("a\0b", Err(TopicError::NullCharacter)),
            (&long, Err(TopicError::TooLong(65_536))),
        ];
        for (filter, expected) in cases {
            assert_eq!(validate_topic_filter(filter), expected, "filter {filter:?}");
        }
        assert_eq!(validate_topic_filter(&long[1..]), Ok(()));
    }

    #[test]
    fn topic_name_validation_follows_the_specification() {
        let long = "a".repeat(65_536);
        let cases: [(&str, Result<(), TopicError>); 12] = [
            ("sport/tennis/player1", Ok(())),
            ("/", Ok(())),
            ("/finance", Ok(())),
            ("$iothub/twin/GET/?$rid=1", Ok(())),
            ("devices/dev1/messages/events/%24.mid=1&a=b", Ok(())),
            ("ünïcödé/トピック", Ok(())),
            ("sport/#", Err(TopicError::WildcardInTopicName)),
            ("sport/+/x", Err(TopicError::WildcardInTopicName)),
            ("a#b", Err(TopicError::WildcardInTopicName)),
            ("", Err(TopicError::Empty)),
            ("a\0", Err(TopicError::NullCharacter)),
            (&long, Err(TopicError::TooLong(65_536))),
        ];
        for (name, expected) in cases {
            assert_eq!(validate_topic_name(name), expected, "name {name:?}");
        }
    }
}
