#!/usr/bin/env escript
%% The oracle for tests/test_otp_differential.py: runs one supervision scenario on a
%% real Erlang/OTP supervisor and prints its trace, one "start NAME" / "stop NAME" per
%% line, in the order the children's processes started and ended.
%%
%% Usage: scenario.escript STRATEGY CHILDREN ACTIONS
%%   CHILDREN: comma-separated NAME:RESTART (permanent | transient | temporary)
%%   ACTIONS:  comma-separated crash:NAME | exit:NAME | terminate:NAME | restart:NAME |
%%             stop (the whole supervisor)
%% Each child is a process that prints "start NAME" when started and "stop NAME" when
%% it ends, whatever the reason (crash, normal exit, shutdown by its supervisor).
-mode(compile).
-export([init/1, start_child/1]).

main([Strategy, Children, Actions]) ->
    ok = logger:set_primary_config(level, none),  % stdout is the trace alone
    Specs = [spec(C) || C <- string:tokens(Children, ",")],
    Flags = #{strategy => list_to_atom(Strategy), intensity => 100, period => 10},
    {ok, Sup} = supervisor:start_link(?MODULE, {Flags, Specs}),
    unlink(Sup),
    [act(Sup, A) || A <- string:tokens(Actions, ",")],
    settle(Sup),
    halt(0).

%% supervisor callback
init({Flags, Specs}) -> {ok, {Flags, Specs}}.

spec(Text) ->
    [Name, Restart] = string:tokens(Text, ":"),
    Id = list_to_atom(Name),
    #{id => Id, start => {?MODULE, start_child, [Id]},
      restart => list_to_atom(Restart), shutdown => 1000, type => worker}.

start_child(Id) ->
    Parent = self(),
    Pid = spawn_link(fun() -> child(Id, Parent) end),
    receive {Pid, started} -> {ok, Pid} end.

child(Id, Parent) ->
    process_flag(trap_exit, true),
    io:format("start ~s~n", [Id]),
    Parent ! {self(), started},
    loop(Id).

loop(Id) ->
    receive
        crash -> io:format("stop ~s~n", [Id]), exit(crashed);
        normal_exit -> io:format("stop ~s~n", [Id]), exit(normal);
        {'EXIT', _, Reason} -> io:format("stop ~s~n", [Id]), exit(Reason);
        _ -> loop(Id)
    end.

act(Sup, "stop") ->
    Ref = monitor(process, Sup),
    exit(Sup, shutdown),
    receive {'DOWN', Ref, _, _, _} -> ok end;
act(Sup, Action) ->
    [Verb, Name] = string:tokens(Action, ":"),
    Id = list_to_atom(Name),
    case Verb of
        "crash" -> signal(Sup, Id, crash);
        "exit" -> signal(Sup, Id, normal_exit);
        "terminate" -> ok = supervisor:terminate_child(Sup, Id);
        "restart" -> {ok, _} = supervisor:restart_child(Sup, Id)
    end,
    settle(Sup).

signal(Sup, Id, Message) ->
    {Id, Pid, _, _} = lists:keyfind(Id, 1, supervisor:which_children(Sup)),
    Ref = monitor(process, Pid),
    Pid ! Message,
    receive {'DOWN', Ref, _, _, _} -> ok end.

%% Let the supervisor handle the child's exit and finish restarting.
settle(Sup) ->
    timer:sleep(100),
    case is_process_alive(Sup) of
        true -> _ = supervisor:which_children(Sup), ok;
        false -> ok
    end.
