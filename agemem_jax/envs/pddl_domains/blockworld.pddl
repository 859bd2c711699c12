; Blocks on a table and a single arm (agemem_jax). Same predicate and action names and
; parameter orders as the AgentBoard task set (whose problems name this domain
; blocksworld-4ops), so one English renderer serves both.
(define (domain blocksworld-4ops)
  (:requirements :strips)
  (:predicates (on ?x ?y) (on-table ?x) (clear ?x) (holding ?x) (arm-empty))

  ; Lift a clear block from the table.
  (:action pickup
    :parameters (?ob)
    :precondition (and (on-table ?ob) (clear ?ob) (arm-empty))
    :effect (and (holding ?ob)
                 (not (on-table ?ob)) (not (clear ?ob)) (not (arm-empty))))

  ; Set the held block on the table.
  (:action putdown
    :parameters (?ob)
    :precondition (holding ?ob)
    :effect (and (on-table ?ob) (clear ?ob) (arm-empty) (not (holding ?ob))))

  ; Set the held block on a clear block.
  (:action stack
    :parameters (?ob ?underob)
    :precondition (and (holding ?ob) (clear ?underob))
    :effect (and (on ?ob ?underob) (clear ?ob) (arm-empty)
                 (not (holding ?ob)) (not (clear ?underob))))

  ; Lift a clear block off the block below it.
  (:action unstack
    :parameters (?ob ?underob)
    :precondition (and (on ?ob ?underob) (clear ?ob) (arm-empty))
    :effect (and (holding ?ob) (clear ?underob)
                 (not (on ?ob ?underob)) (not (clear ?ob)) (not (arm-empty)))))
