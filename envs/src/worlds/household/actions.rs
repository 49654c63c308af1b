//! The household world's rules: what each action does and what the agent observes.

use super::scene::{Place, Scene, Treatment};

/// A parsed action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `look`
    Look,
    /// `inventory`
    Inventory,
    /// `go to X`
    GoTo(String),
    /// `open X`
    Open(String),
    /// `close X`
    Close(String),
    /// `take X from Y`
    Take(String, String),
    /// `put X in/on Y` (also `put X in Y`, `put X on Y`, `move X to Y`)
    Put(String, String),
    /// `clean|heat|cool X with Y`
    Treat(Treatment, String, String),
    /// `use X`
    Use(String),
    /// `examine X`
    Examine(String),
}

/// The observation of an action that does nothing.
pub const NOTHING_HAPPENS: &str = "Nothing happens.";

/// Reads an action from a model's text: its last non-empty line, lower-cased, without a
/// leading `>` or `action:` and a trailing period.
pub fn parse_action(text: &str) -> Option<Action> {
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let mut line = line.trim().to_lowercase();
    for prefix in [">", "action:"] {
        if let Some(rest) = line.strip_prefix(prefix) {
            line = rest.trim().to_string();
        }
    }
    let line = line
        .trim_end_matches('.')
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let two = |rest: &str, sep: &str| {
        rest.split_once(sep)
            .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
    };
    let action = match line.as_str() {
        "look" => Action::Look,
        "inventory" | "inv" | "i" => Action::Inventory,
        _ => {
            let (verb, rest) = line.split_once(' ')?;
            match verb {
                "go" => Action::GoTo(rest.strip_prefix("to ")?.to_string()),
                "open" => Action::Open(rest.to_string()),
                "close" => Action::Close(rest.to_string()),
                "take" => {
                    let (o, r) = two(rest, " from ")?;
                    Action::Take(o, r)
                }
                "put" => {
                    let (o, r) = two(rest, " in/on ")
                        .or_else(|| two(rest, " in "))
                        .or_else(|| two(rest, " on "))?;
                    Action::Put(o, r)
                }
                "move" => {
                    let (o, r) = two(rest, " to ")?;
                    Action::Put(o, r)
                }
                "clean" | "heat" | "cool" => {
                    let t = match verb {
                        "clean" => Treatment::Clean,
                        "heat" => Treatment::Heat,
                        _ => Treatment::Cool,
                    };
                    let (o, r) = two(rest, " with ")?;
                    Action::Treat(t, o, r)
                }
                "use" => Action::Use(rest.to_string()),
                "examine" => Action::Examine(rest.to_string()),
                _ => return None,
            }
        }
    };
    Some(action)
}

/// "a X, a Y, and a Z", or "nothing".
fn list(names: &[&str]) -> String {
    match names {
        [] => "nothing".into(),
        [one] => format!("a {one}"),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(|n| format!("a {n}")).collect();
            format!("{}, and a {last}", init.join(", "))
        }
    }
}

impl Scene {
    fn receptacle(&self, name: &str) -> Option<usize> {
        self.receptacles.iter().position(|r| r.name == name)
    }

    fn object(&self, name: &str) -> Option<usize> {
        self.objects.iter().position(|o| o.name == name)
    }

    /// The objects visible in/on receptacle `r` (none when it is closed).
    fn visible(&self, r: usize) -> Vec<&str> {
        if !self.receptacles[r].open {
            return vec![];
        }
        self.contents(r)
            .iter()
            .map(|&i| self.objects[i].name.as_str())
            .collect()
    }

    fn describe(&self, r: usize) -> String {
        let rec = &self.receptacles[r];
        match (rec.openable, rec.open) {
            (true, false) => format!("The {} is closed.", rec.name),
            (true, true) => format!(
                "The {} is open. In it, you see {}.",
                rec.name,
                list(&self.visible(r))
            ),
            _ => format!("On the {}, you see {}.", rec.name, list(&self.visible(r))),
        }
    }

    /// The room as first seen, with the task.
    pub fn introduction(&self) -> String {
        let names: Vec<&str> = self.receptacles.iter().map(|r| r.name.as_str()).collect();
        format!(
            "You are in the middle of a {}. Looking quickly around you, you see {}.\n\n{}",
            self.room,
            list(&names),
            self.task_line()
        )
    }

    /// The task as the introduction states it ("Your task is to: put a book in/on shelf.").
    pub fn task_line(&self) -> String {
        format!("Your task is to: {}", self.task.describe())
    }

    /// Whether the agent stands at receptacle `r` and can reach inside it.
    fn reachable(&self, r: usize) -> bool {
        self.at == Some(r) && self.receptacles[r].open
    }

    /// Applies `action` and returns the observation ([`NOTHING_HAPPENS`] when it is not
    /// possible here).
    pub fn apply(&mut self, action: &Action) -> String {
        self.try_apply(action)
            .unwrap_or_else(|| NOTHING_HAPPENS.to_string())
    }

    fn try_apply(&mut self, action: &Action) -> Option<String> {
        match action {
            Action::Look => Some(match self.at {
                None => format!(
                    "You are in the middle of a {}. Looking quickly around you, you see {}.",
                    self.room,
                    list(
                        &self
                            .receptacles
                            .iter()
                            .map(|r| r.name.as_str())
                            .collect::<Vec<_>>()
                    )
                ),
                Some(r) => format!(
                    "You are facing the {}. Next to it, you see nothing.",
                    self.receptacles[r].name
                ),
            }),
            Action::Inventory => Some(match self.held() {
                Some(h) => format!("You are carrying: a {}.", self.objects[h].name),
                None => "You are not carrying anything.".into(),
            }),
            Action::GoTo(name) => {
                let r = self.receptacle(name)?;
                if self.at == Some(r) {
                    return None;
                }
                self.at = Some(r);
                Some(format!(
                    "You arrive at {}. {}",
                    self.receptacles[r].name,
                    self.describe(r)
                ))
            }
            Action::Open(name) => {
                let r = self.receptacle(name)?;
                let rec = &self.receptacles[r];
                if self.at != Some(r) || !rec.openable || rec.open {
                    return None;
                }
                self.receptacles[r].open = true;
                Some(format!(
                    "You open the {}. The {} is open. In it, you see {}.",
                    name,
                    name,
                    list(&self.visible(r))
                ))
            }
            Action::Close(name) => {
                let r = self.receptacle(name)?;
                let rec = &self.receptacles[r];
                if self.at != Some(r) || !rec.openable || !rec.open {
                    return None;
                }
                self.receptacles[r].open = false;
                Some(format!("You close the {name}."))
            }
            Action::Take(o, r) => {
                let (i, r) = (self.object(o)?, self.receptacle(r)?);
                let ok = self.reachable(r)
                    && self.objects[i].place == Place::In(r)
                    && self.objects[i].portable()
                    && self.held().is_none();
                if !ok {
                    return None;
                }
                self.objects[i].place = Place::Held;
                Some(format!(
                    "You pick up the {} from the {}.",
                    o, self.receptacles[r].name
                ))
            }
            Action::Put(o, r) => {
                let (i, r) = (self.object(o)?, self.receptacle(r)?);
                if !self.reachable(r) || self.objects[i].place != Place::Held {
                    return None;
                }
                self.objects[i].place = Place::In(r);
                let rec = &self.receptacles[r];
                Some(format!(
                    "You put the {o} {} the {}.",
                    rec.preposition, rec.name
                ))
            }
            Action::Treat(t, o, r) => {
                let (i, r) = (self.object(o)?, self.receptacle(r)?);
                let ok = self.at == Some(r)
                    && self.objects[i].place == Place::Held
                    && t.appliances().contains(&self.receptacles[r].kind)
                    && super::scene::accepts(self.objects[i].kind, *t);
                if !ok {
                    return None;
                }
                let object = &mut self.objects[i];
                match t {
                    Treatment::Clean => object.clean = true,
                    Treatment::Heat => (object.hot, object.cool) = (true, false),
                    Treatment::Cool => (object.hot, object.cool) = (false, true),
                }
                Some(format!(
                    "You {} the {o} using the {}.",
                    t.verb(),
                    self.receptacles[r].name
                ))
            }
            Action::Use(o) => {
                let i = self.object(o)?;
                let here = self
                    .at
                    .is_some_and(|r| self.objects[i].place == Place::In(r));
                if self.objects[i].kind != "desklamp" || !here {
                    return None;
                }
                let lamp = &mut self.objects[i];
                lamp.lit = !lamp.lit;
                Some(format!(
                    "You turn {} the {o}.",
                    if lamp.lit { "on" } else { "off" }
                ))
            }
            Action::Examine(name) => {
                if let Some(r) = self.receptacle(name) {
                    return (self.at == Some(r)).then(|| self.describe(r));
                }
                let i = self.object(name)?;
                let visible = match self.objects[i].place {
                    Place::Held => true,
                    Place::In(r) => self.reachable(r),
                };
                visible.then(|| format!("There's nothing special about {name}."))
            }
        }
    }

    /// Every action that does something in the current state, as text, in a stable order.
    pub fn admissible_actions(&self) -> Vec<String> {
        let mut out = vec!["look".to_string(), "inventory".to_string()];
        for (r, rec) in self.receptacles.iter().enumerate() {
            if self.at != Some(r) {
                out.push(format!("go to {}", rec.name));
            }
        }
        let Some(r) = self.at else { return out };
        let rec = &self.receptacles[r];
        out.push(format!("examine {}", rec.name));
        if rec.openable {
            out.push(format!(
                "{} {}",
                if rec.open { "close" } else { "open" },
                rec.name
            ));
        }
        let held = self.held();
        if rec.open {
            for i in self.contents(r) {
                let o = &self.objects[i];
                if o.portable() && held.is_none() {
                    out.push(format!("take {} from {}", o.name, rec.name));
                }
                if o.kind == "desklamp" {
                    out.push(format!("use {}", o.name));
                }
            }
        }
        if let Some(h) = held {
            let o = &self.objects[h];
            out.push(format!("examine {}", o.name));
            if rec.open {
                out.push(format!("put {} in/on {}", o.name, rec.name));
            }
            for t in [Treatment::Clean, Treatment::Heat, Treatment::Cool] {
                if t.appliances().contains(&rec.kind) && super::scene::accepts(o.kind, t) {
                    out.push(format!("{} {} with {}", t.verb(), o.name, rec.name));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worlds::household::scene::TaskType;

    fn kitchen() -> Scene {
        (0..)
            .map(|seed| Scene::generate(seed, &[TaskType::PickHeatThenPlace]))
            .find(|s| s.receptacles.iter().any(|r| r.kind == "stoveburner"))
            .unwrap()
    }

    #[test]
    fn actions_parse_from_the_last_line() {
        assert_eq!(
            parse_action("Think: hot.\n> Go to Fridge 1."),
            Some(Action::GoTo("fridge 1".into()))
        );
        assert_eq!(
            parse_action("put apple 1 in/on countertop 1"),
            Some(Action::Put("apple 1".into(), "countertop 1".into()))
        );
        assert_eq!(
            parse_action("heat egg 2 with microwave 1"),
            Some(Action::Treat(
                Treatment::Heat,
                "egg 2".into(),
                "microwave 1".into()
            ))
        );
        assert_eq!(parse_action("dance"), None);
        assert_eq!(parse_action(""), None);
    }

    #[test]
    fn closed_receptacles_hide_their_contents_until_opened() {
        let mut s = kitchen();
        let obs = s.apply(&Action::GoTo("fridge 1".into()));
        assert_eq!(obs, "You arrive at fridge 1. The fridge 1 is closed.");
        let inside = s.contents(s.receptacle("fridge 1").unwrap());
        if let Some(&i) = inside.first() {
            let name = s.objects[i].name.clone();
            assert_eq!(
                s.apply(&Action::Take(name.clone(), "fridge 1".into())),
                NOTHING_HAPPENS
            );
            assert!(s.apply(&Action::Open("fridge 1".into())).contains(&name));
            assert!(
                s.apply(&Action::Take(name, "fridge 1".into()))
                    .starts_with("You pick up")
            );
        } else {
            assert!(
                s.apply(&Action::Open("fridge 1".into()))
                    .ends_with("you see nothing.")
            );
        }
        assert_eq!(
            s.apply(&Action::Open("fridge 1".into())),
            NOTHING_HAPPENS,
            "already open"
        );
        assert_eq!(
            s.apply(&Action::Close("fridge 1".into())),
            "You close the fridge 1."
        );
    }

    #[test]
    fn rules_need_the_right_place_hands_and_appliance() {
        let mut s = kitchen();
        let (i, r) = s
            .objects
            .iter()
            .enumerate()
            .find_map(|(i, o)| match o.place {
                Place::In(r) if !s.receptacles[r].openable && o.kind == s.task.object => {
                    Some((i, r))
                }
                _ => None,
            })
            .unwrap_or_else(|| {
                let i = s
                    .objects
                    .iter()
                    .position(|o| o.kind == s.task.object)
                    .unwrap();
                let Place::In(r) = s.objects[i].place else {
                    unreachable!()
                };
                s.receptacles[r].open = true;
                (i, r)
            });
        let (o, rn) = (s.objects[i].name.clone(), s.receptacles[r].name.clone());
        assert_eq!(
            s.apply(&Action::Take(o.clone(), rn.clone())),
            NOTHING_HAPPENS,
            "not there yet"
        );
        s.apply(&Action::GoTo(rn.clone()));
        assert!(
            s.apply(&Action::Take(o.clone(), rn.clone()))
                .starts_with("You pick up")
        );
        assert_eq!(
            s.apply(&Action::Inventory),
            format!("You are carrying: a {o}.")
        );
        assert_eq!(
            s.apply(&Action::Treat(Treatment::Heat, o.clone(), rn.clone())),
            NOTHING_HAPPENS
        );
        s.apply(&Action::GoTo("stoveburner 1".into()));
        assert_eq!(
            s.apply(&Action::Treat(
                Treatment::Cool,
                o.clone(),
                "stoveburner 1".into()
            )),
            NOTHING_HAPPENS
        );
        let obs = s.apply(&Action::Treat(
            Treatment::Heat,
            o.clone(),
            "stoveburner 1".into(),
        ));
        assert_eq!(obs, format!("You heat the {o} using the stoveburner 1."));
        assert!(s.objects[i].hot);
        assert!(
            s.apply(&Action::Put(o, "stoveburner 1".into()))
                .contains("on the stoveburner 1")
        );
        assert_eq!(
            s.apply(&Action::GoTo("stoveburner 1".into())),
            NOTHING_HAPPENS,
            "already here"
        );
    }

    #[test]
    fn every_admissible_action_does_something() {
        for seed in 0..40 {
            let mut s = Scene::generate(seed, &[]);
            for k in 0..15 {
                let actions = s.admissible_actions();
                for a in &actions {
                    let mut copy = s.clone();
                    assert_ne!(
                        copy.apply(&parse_action(a).unwrap()),
                        NOTHING_HAPPENS,
                        "seed {seed}: {a}"
                    );
                }
                let pick = &actions[(seed as usize * 7 + k * 3) % actions.len()];
                s.apply(&parse_action(pick).unwrap());
            }
        }
    }
}
